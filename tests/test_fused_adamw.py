"""Fused AdamW (issue 38): chosen only when every trainable parameter is on a GPU and DeepSpeed does not own the
step; the fused kernel's update equals the default implementation's (checked on CPU, where torch has both)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from vlablocks.core.training.optim import build_optimizer, fused_adamw

TRAINER = SimpleNamespace(
    learning_rate=1e-3,
    weight_decay=0.01,
    betas=[0.9, 0.95],
    warmup_steps=0,
    max_steps=10,
    lr_schedule="constant",
    min_lr_ratio=0.0,
)


class OnDevice(nn.Module):
    """A module whose parameters report `device_type` (no GPU is needed to test the choice)."""

    def __init__(self, device_type: str, trainable: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2), requires_grad=trainable)
        self.device_type = device_type

    def parameters(self, recurse: bool = True):
        return iter(
            [
                SimpleNamespace(requires_grad=p.requires_grad, device=SimpleNamespace(type=self.device_type))
                for p in super().parameters(recurse)
            ]
        )


def test_fused_is_chosen_on_a_gpu_without_deepspeed_only():
    assert fused_adamw(OnDevice("cuda"), deepspeed=False)
    assert not fused_adamw(OnDevice("cuda"), deepspeed=True)
    assert not fused_adamw(OnDevice("cpu"), deepspeed=False)
    assert not fused_adamw(OnDevice("cuda", trainable=False), deepspeed=False)  # nothing to train
    assert not fused_adamw(nn.Linear(2, 2), deepspeed=False)  # a real CPU module


def test_the_fused_step_equals_the_default_one():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [build_optimizer(model, TRAINER, fused=fused)[0] for model, fused in zip(models, (False, True))]
    assert optimizers[1].defaults["fused"] and not optimizers[0].defaults["fused"]
    initial = [p.detach().clone() for p in models[0].parameters()]
    inputs = torch.randn(32, 8)
    for _ in range(3):
        for model, optimizer in zip(models, optimizers):
            model(inputs).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert all(not torch.equal(a, b) for a, b in zip(models[0].parameters(), initial))  # the steps moved them
