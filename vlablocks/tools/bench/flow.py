"""Row 4: flow-matching sampling with the VLM prefix encoded once vs recomputed at every Euler step.

Both sides run the same QwenFlowMatching model on the same example, noise and state, 10 Euler steps:
  encoded once  `encode_prefix` once, then the head's `predict` (context projected once, 10 velocity calls)
  recomputed    every Euler step calls the VLM again (`encode_prefix` + `encode_context`) before `velocity`
The two produce the same actions (the row notes the largest difference), so only the reuse differs.
"""

from __future__ import annotations

import torch

from vlablocks.core.action_model.flow_matching import euler_integrate, random_tensor
from vlablocks.core.batch import Batch
from vlablocks.core.framework.conditioning import vlm_conditioning
from vlablocks.core.framework.qwen_flow_matching import QwenFlowMatching
from vlablocks.tools.bench.models import bench_examples, bench_experiment, build_on_device, stats_examples
from vlablocks.tools.bench.result import Goal, Row, Side, interleaved
from vlablocks.tools.bench.settings import BenchSettings

NUM_STEPS = 10


def head_options(settings: BenchSettings) -> dict:
    """The DiT head: as wide and deep as the tiny VLM's LLM on CPU (not dwarfing it), defaults at 3B."""
    options = {"name": "flow_matching", "num_inference_steps": NUM_STEPS}
    if settings.arch == "tiny":
        options.update(hidden_dim=128, num_layers=2, num_heads=4)
    return options


def generator(model: QwenFlowMatching, seed: int) -> torch.Generator:
    return torch.Generator(device=model.device).manual_seed(seed)


@torch.no_grad()
def sample_encoded_once(model: QwenFlowMatching, batch: Batch, seed: int) -> torch.Tensor:
    """-> normalized actions [B, T, D]: what `sample_actions` does, the VLM once and the head's `predict`."""
    conditioning = vlm_conditioning(model.vlm(batch.vlm))
    return model.action_model.predict(conditioning, batch.state, generator(model, seed), NUM_STEPS)


@torch.no_grad()
def sample_recomputed(model: QwenFlowMatching, batch: Batch, seed: int) -> torch.Tensor:
    """-> normalized actions [B, T, D]; the VLM prefix (and its projection) is recomputed at every step.

    The noise is drawn as `predict` draws it, so both sides integrate from the same x_0.
    """
    head = model.action_model
    shape = (len(batch), head.action_horizon, head.action_dim)
    noise = random_tensor("normal", shape, generator(model, seed), model.device, head.position.dtype)
    state_token = head.encode_state(batch.state, noise.shape[0])

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        contexts = head.encode_context(vlm_conditioning(model.vlm(batch.vlm)))
        return head.velocity(contexts, x, t, state_token)

    return euler_integrate(velocity, noise, NUM_STEPS)


def flow_row(settings: BenchSettings) -> Row:
    _, stats = stats_examples(settings)
    examples = bench_examples(settings, 1, seed=0)
    experiment = bench_experiment({"name": "QwenFlowMatching", "action_model": head_options(settings)}, settings)
    policy = build_on_device(experiment, stats, settings.device).eval()
    model = policy.model
    batch = policy.processor(examples).to(settings.device)
    difference = (sample_encoded_once(model, batch, 0) - sample_recomputed(model, batch, 0)).abs().max()
    times = interleaved(
        {
            "once": lambda: sample_encoded_once(model, batch, 0),
            "recomputed": lambda: sample_recomputed(model, batch, 0),
        },
        settings.warmup,
        settings.repeats,
        settings.device,
    )
    head = model.action_model
    vlm_params = sum(p.numel() for p in model.vlm.parameters())
    head_params = sum(p.numel() for p in head.parameters())
    notes = [
        f"{NUM_STEPS} Euler steps, batch 1, 1 view; Qwen2.5-VL arch {settings.arch} ({vlm_params / 1e6:.2f} M)"
        f" + DiT head {head.config.hidden_dim} wide x {head.config.num_layers} blocks ({head_params / 1e6:.2f} M).",
        f"Both sides give the same actions: max |difference| {difference.item():.1e}.",
    ]
    return Row(
        key="flow_matching",
        title=f"flow matching: prefix encoded once vs recomputed each step ({NUM_STEPS} steps)",
        unit="ms",
        ours=Side("encoded once", times["once"]),
        baseline=Side("recomputed", times["recomputed"]),
        ratio_name="recomputed / once",
        invert=True,
        goals=[Goal("ratio", ">=", 4.0)],
        notes=notes,
        checks={"action_max_abs_diff": difference.item()},
    )
