"""Exponential moving average (EMA) of the trainable weights, kept beside training and saved with checkpoints.

After optimizer step t (t = 1, 2, ...), for every trainable parameter theta:

    d_t     = min(decay, (1 + t) / (10 + t))          warm-up: early averages are not dominated by the init
    ema_t   = d_t * ema_{t-1} + (1 - d_t) * theta_t    ema_0 = theta_0 (the weights training starts from)

(the warm-up factor is TensorFlow's `ExponentialMovingAverage(num_updates=t)`). The average is kept in
float32 on the parameters' device, saved as `ema.safetensors` in every training checkpoint (with the step
count, so a resume continues it exactly), and served by choice: `Framework.from_pretrained(dir, weights="ema")`,
`vlablocks serve --weights ema`. With ZeRO-3 each rank holds only shards of the weights: not supported.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlablocks.core.auxiliary.losses import upgrade_legacy_keys

EMA_FILE = "ema.safetensors"
STEP_KEY = "__ema_step__"


class EMA:
    """Shadow float32 copies of `model`'s trainable parameters, updated with `update(model)` after each step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"trainer.ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.step = 0
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def factor(self) -> float:
        """d_t for the update about to be made (self.step is t - 1 before it)."""
        t = self.step + 1
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.factor()
        for name, parameter in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].mul_(d).add_(parameter.detach().float(), alpha=1.0 - d)
        self.step += 1

    def save(self, directory: Path) -> None:
        tensors = {name: value.detach().contiguous().cpu() for name, value in self.shadow.items()}
        save_file({**tensors, STEP_KEY: torch.tensor([self.step])}, str(Path(directory) / EMA_FILE))

    def load(self, directory: Path) -> None:
        state = load_file(str(Path(directory) / EMA_FILE))
        upgrade_legacy_keys(state)
        self.step = int(state.pop(STEP_KEY)[0])
        if set(state) != set(self.shadow):
            raise ValueError(f"{Path(directory) / EMA_FILE} averages other parameters than this model trains")
        for name, value in state.items():
            self.shadow[name].copy_(value)


@torch.no_grad()
def load_ema_weights(model: nn.Module, directory: Path) -> None:
    """Copies a checkpoint's averaged weights into `model` (the parameters it averaged; the rest stay)."""
    path = Path(directory) / EMA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {EMA_FILE}: it was trained without trainer.ema_decay")
    state = load_file(str(path))
    state.pop(STEP_KEY, None)
    upgrade_legacy_keys(state)
    parameters = dict(model.named_parameters())
    unknown = sorted(set(state) - set(parameters))
    if unknown:
        raise ValueError(f"{path} holds parameters the model does not have: {unknown[:5]}")
    for name, value in state.items():
        parameters[name].copy_(value.to(parameters[name].dtype))
