"""Row: RL rollout throughput, batched over 32 toy envs (one policy call serves every live episode) vs one env at a
time, with the same sampling policy (QwenOFT, binned head, temperature 1.6) and the same 32 episode seeds.

Throughput is env steps per second over whole episodes (a random-init policy rarely succeeds, so most episodes
run their 30 steps). The sides alternate (`interleaved`) so both see the same machine load.
"""

from __future__ import annotations

import torch

from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.envs.vector import make_vector_env
from vlablocks.core.evaluation.actors import SamplingActor
from vlablocks.core.evaluation.rollout import run_episodes
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import build_policy
from vlablocks.tools.bench.models import SEED, vlm_options
from vlablocks.tools.bench.result import Goal, Row, Side, interleaved
from vlablocks.tools.bench.settings import BenchSettings

ENVS = 32
TOY = {"name": "toy", "action_horizon": 4, "action_dim": 2, "state_dim": 2}


def rollout_row(settings: BenchSettings) -> Row:
    framework = {"name": "QwenOFT", "action_model": {"name": "binned"}, "vlm": vlm_options(settings, 112)}
    experiment = parse_experiment({"seed": SEED, "platform": TOY, "framework": framework})
    examples = synthetic_examples(
        PlatformConfig(**TOY), 16, image_size=112, seed=1, dataset_name="toy", camera_keys=["top"]
    )
    torch.manual_seed(SEED)
    with torch.device(settings.device):
        policy = build_policy(experiment, synthetic_norm_stats(examples), camera_keys=["top"]).eval()
    seeds = list(range(5000, 5000 + ENVS))
    batched_envs, single_env = make_vector_env({"name": "toy"}, ENVS), make_vector_env({"name": "toy"}, 1)

    steps = {}  # env steps per call of each side (the same every call: same seeds, same sampling seed)

    def batched() -> None:
        actor = SamplingActor(policy, 1.6, torch.Generator(settings.device).manual_seed(0))
        steps["batched"] = sum(e.steps for e in run_episodes(batched_envs, seeds, actor))

    def single() -> None:
        actor = SamplingActor(policy, 1.6, torch.Generator(settings.device).manual_seed(0))
        steps["single"] = sum(e.steps for e in run_episodes(single_env, seeds, actor))  # the engine with N = 1

    times = interleaved({"batched": batched, "single": single}, 1, max(2, settings.repeats // 5), settings.device)
    rates = {name: [steps[name] / (ms / 1e3) for ms in values] for name, values in times.items()}
    return Row(
        key="rollout",
        title=f"RL rollouts: env steps/s, {ENVS} toy envs batched vs one env at a time (same policy)",
        unit="env steps/s",
        ours=Side(f"batched x{ENVS}", rates["batched"]),
        baseline=Side("one at a time", rates["single"]),
        ratio_name="batched / single",
        goals=[Goal("ratio", ">=", 8.0)],
        notes=[
            f"QwenOFT + binned head (256 bins), Qwen2.5-VL arch {settings.arch}, 1 view 112x112, chunks of 4 played "
            f"whole; {steps['batched']} env steps per side per repeat (seeds 5000-{5000 + ENVS - 1})."
        ],
        checks={"env_steps_batched": steps["batched"], "env_steps_single": steps["single"]},
    )
