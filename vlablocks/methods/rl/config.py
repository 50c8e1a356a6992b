"""RL options: the `rl:` section of an experiment config (`vlablocks rl`; equations in vlablocks/methods/rl/grpo.py and ppo.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlablocks.core.registry import CONFIG_SECTIONS
from vlablocks.core.vlm.base import LoraOptions


@dataclass(frozen=True)
class RLLoraOptions(LoraOptions):
    """`rl.lora`: adapters added to the VLM when RL starts (SimpleVLA-RL: rank 32, alpha 64, every Linear)."""

    rank: int = 32
    alpha: int = 64


@dataclass(frozen=True)
class PPOOptions:
    """`rl.ppo` (rl.algorithm: ppo): the critic and GAE; equations in vlablocks/methods/rl/ppo.py."""

    gamma: float = 1.0  # discount per policy call (veRL's default)
    lam: float = 1.0  # GAE lambda (veRL's default; 1.0: Monte Carlo return minus the value)
    critic: dict = field(  # a value-model section (vlablocks/methods/value/); only StateValueMLP for now
        default_factory=lambda: {
            "name": "StateValueMLP",
            "hidden_dim": 64,
            "value_head": {"loss": "mse", "hidden_dim": 64},
        }
    )
    critic_learning_rate: float = 1e-3
    value_clip: float | None = 0.5  # veRL's cliprange_value; None: plain MSE


@CONFIG_SECTIONS.register("rl")
@dataclass(frozen=True)
class RLConfig:
    algorithm: Literal["grpo", "ppo"] = "grpo"  # ppo: a critic and GAE instead of group-normalized advantages
    init_ckpt: str | None = None  # the SFT checkpoint to start from (`--init-ckpt` sets it)
    iterations: int = 100
    groups_per_iteration: int = 8  # B initial states per iteration (per process)
    group_size: int = 8  # G episodes per initial state
    temperature: float = 1.6  # sampling temperature of the rollouts (and of the log-probs the update recomputes)
    verifier_reward_coef: float = 5.0  # reward = success * coef
    clip_low: float = 0.2  # PPO ratio bounds: [1 - clip_low, 1 + clip_high] (clip-higher: clip_high > clip_low)
    clip_high: float = 0.28
    dynamic_sampling: bool = True  # drop groups whose rewards are all equal and refill with new ones
    # Half of each group is told another block of the same scene (the env's wrong instruction), rewarded for ending
    # on the block it was told: the group then contrasts instructions, not only sampling noise (docs/rl.md).
    contrast_instructions: bool = False
    max_sampling_rounds: int = 3  # rollout rounds per iteration at most while refilling
    kl_coef: float = 0.0  # > 0: k3 KL to the initial (reference) policy
    entropy_coef: float = 0.0
    learning_rate: float | dict[str, float] = 1e-5  # or {base: x, <regex>: y} groups, as trainer.learning_rate
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays over `iterations` to min_lr_ratio x
    min_lr_ratio: float = 0.1  # (cosine) the last iteration's share of the base rate
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    minibatch_size: int = 64  # policy calls per gradient step
    update_epochs: int = 1
    env: dict = field(default_factory=lambda: {"name": "toy"})  # an EVAL_ENVS section
    env_workers: bool = False  # one process per env (slow simulators); the toy env runs in-process
    open_loop_horizon: int | None = None  # actions played per chunk (None: the whole chunk)
    train_seed: int = 1_000_000  # initial states of iteration k come from seeds train_seed + k * 10_000 + ...
    eval_every: int = 10  # iterations between greedy evaluations on fresh seeds (0: never)
    eval_episodes: int = 100
    eval_seed: int = 1000
    save_every: int = 10
    keep_last: int = 2
    lora: RLLoraOptions = field(default_factory=RLLoraOptions)  # enabled: RL trains adapters (+ the head) only
    ppo: PPOOptions = field(default_factory=PPOOptions)
    val_only: bool = False  # evaluate the initial checkpoint (greedy, + wrong-instruction control) and stop
