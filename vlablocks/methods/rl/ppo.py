"""PPO with a value critic and GAE (`rl.algorithm: ppo`), next to GRPO (vlablocks/methods/rl/grpo.py).

The steps of an episode are its policy calls t = 0 .. T-1 (one sampled chunk each). The only reward is the
verifier's, at the last call; the episode's end is terminal (V_T = 0, as veRL does at the end of a response):

    r_t       = verifier_reward_coef * success  if t = T - 1, else 0
    delta_t   = r_t + gamma V(s_{t+1}) - V(s_t)                        V(s_T) = 0
    A_t       = sum_{l >= 0} (gamma lam)^l delta_{t+l}  =  delta_t + gamma lam A_{t+1}       (GAE)
    R_t       = A_t + V(s_t)                                           (the critic's regression target)
    A_hat_t   = (A_t - mean A) / sqrt(var A + 1e-8)                    over every call of the iteration (and process),
                                                                       unbiased var, as veRL's masked_whiten

V are the critic's values before the update (V_old). Every choice of call t shares A_hat_t in the clipped policy
loss GRPO uses (grpo.clipped_policy_loss, clip-higher). The critic is regressed on R_t with veRL's clipped value loss
(`rl.ppo.value_clip` = c; None: the plain 0.5 * MSE):

    L_V = 0.5 * mean_t max((V(s_t) - R_t)^2, (clip(V(s_t), V_old(s_t) - c, V_old(s_t) + c) - R_t)^2)

Logged: value_loss, value_clip_fraction (calls whose clipped term was larger), explained_variance
1 - Var(R - V_old) / Var(R) of the iteration's calls, and the mean value.

The critic is the state MLP of vlablocks/methods/value/ (StateValueMLP, MSE head): V from the normalized robot state
alone. It is cheap (a few thousand parameters, no second VLM on a CPU) and reuses the value models' code, but it sees
neither images nor the instruction, so it is a state baseline, not the whole state's value; a critic on the VLM
(QwenValue) is left for later. It has its own AdamW (`rl.ppo.critic_learning_rate`) and is stepped on the same
minibatches as the policy; its weights and optimizer travel in the checkpoint's trainer_state/ (exact resume).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlablocks.core.build import build
from vlablocks.core.evaluation.rollout import Episode
from vlablocks.core.processor.pipeline import Processor
from vlablocks.core.registry import VALUE_MODELS
from vlablocks.methods.rl.config import PPOOptions

WHITEN_EPS = 1e-8
CRITIC_WEIGHTS, CRITIC_OPTIMIZER = "critic.safetensors", "critic_optimizer.pt"


def episode_rewards(calls: int, success: bool, coef: float) -> torch.Tensor:
    """[T] rewards of an episode of `calls` policy calls: 0 everywhere, coef * success at the last call."""
    rewards = torch.zeros(calls)
    rewards[-1] = coef * float(success)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One episode: rewards, values [T] (V(s_T) = 0 after the last call) -> (advantages A [T], returns R = A + V [T])."""
    advantages = torch.zeros_like(values)
    running, next_value = 0.0, 0.0
    for t in reversed(range(len(values))):
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
        next_value = values[t]
    return advantages, advantages + values


def whiten(advantages: torch.Tensor) -> torch.Tensor:
    """(A - mean) / sqrt(var + 1e-8), unbiased var; a single advantage is only centred (no variance)."""
    centred = advantages - advantages.mean()
    if advantages.numel() < 2:
        return centred
    return centred * torch.rsqrt(advantages.var() + WHITEN_EPS)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float | None
) -> tuple[torch.Tensor, float]:
    """[B] each -> (L_V, the fraction of calls whose clipped term was the larger); clip None: 0.5 * MSE."""
    plain = (values - returns) ** 2
    if clip is None:
        return 0.5 * plain.mean(), 0.0
    clipped = (torch.max(torch.min(values, old_values + clip), old_values - clip) - returns) ** 2
    return 0.5 * torch.max(plain, clipped).mean(), float((clipped > plain).float().mean())


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) (unbiased); nan when the returns do not vary."""
    if returns.numel() < 2 or float(returns.var()) == 0.0:
        return float("nan")
    return float(1.0 - (returns - values).var() / returns.var())


class CriticValues(nn.Module):
    """The value model's V(s) as a forward pass, so DDP wraps the critic's update like the policy's."""

    def __init__(self, value_model: nn.Module) -> None:
        super().__init__()
        self.value_model = value_model

    def forward(self, batch) -> torch.Tensor:
        return self.value_model.head(self.value_model.features(batch))["value"]


class Critic:
    """The critic of `rl.ppo.critic` (a StateValueMLP section) with its processor (the policy's normalization stats,
    state only) and its optimizer; `prepare` hands both to accelerate."""

    def __init__(self, policy, options: PPOOptions, accelerator) -> None:
        if accelerator.state.deepspeed_plugin is not None:
            raise ValueError(
                "rl.algorithm: ppo under DeepSpeed is not wired (a second model to prepare); launch with DDP "
                "(configs/accelerate/ddp.yaml) or use rl.algorithm=grpo"
            )
        section = options.critic
        if section.get("name") != "StateValueMLP":
            raise ValueError(
                f"rl.ppo.critic: only a StateValueMLP critic is wired in, got {section.get('name')!r}; "
                "set rl.ppo.critic.name=StateValueMLP"
            )
        if section.get("value_head", {}).get("loss") != "mse":
            raise ValueError("rl.ppo.critic: the critic regresses returns; set rl.ppo.critic.value_head.loss=mse")
        self.options = options
        value_model = build(VALUE_MODELS, section, platform=policy.model.platform).to(accelerator.device).eval()
        config = dataclasses.replace(
            policy.processor.config, **value_model.processor_options(), fast=None, state_tokens=None, prompt_suffix=""
        )
        self.processor = Processor(dataclasses.replace(config, geometry=None), None, policy.processor.normalizer.stats)
        self.model = CriticValues(value_model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=options.critic_learning_rate)
        self.device = accelerator.device

    def prepare(self, accelerator) -> None:
        self.model, self.optimizer = accelerator.prepare(self.model, self.optimizer)

    def values(self, observations: list[dict]) -> torch.Tensor:
        """V_old of the observations [N] (no gradient)."""
        with torch.no_grad():
            return self.model(self.processor(observations, targets=False).to(self.device)).float().cpu()

    def advantages(self, episodes: list[Episode], coef: float) -> tuple[list, dict]:
        """-> ([(call, A_hat, V_old, R)] over every call of `episodes`, {"explained_variance", "value_mean"})."""
        calls = [call for episode in episodes for call in episode.calls]
        if not calls:
            return [], {"explained_variance": float("nan"), "value_mean": float("nan")}
        old = self.values([call.observation for call in calls])
        advantages, returns, start = [], [], 0
        for episode in episodes:
            end = start + len(episode.calls)
            rewards = episode_rewards(len(episode.calls), episode.success, coef)
            a, r = gae(rewards, old[start:end], self.options.gamma, self.options.lam)
            advantages.append(a)
            returns.append(r)
            start = end
        advantages, returns = whiten(torch.cat(advantages)), torch.cat(returns)
        rows = [(c, float(a), float(v), float(r)) for c, a, v, r in zip(calls, advantages, old, returns)]
        return rows, {"explained_variance": explained_variance(old, returns), "value_mean": float(old.mean())}

    def step(self, rows: list, accelerator, max_grad_norm: float | None) -> dict:
        """One gradient step of L_V on a minibatch of rows (call, A_hat, V_old, R) -> its numbers."""
        batch = self.processor([c.observation for c, *_ in rows], targets=False).to(self.device)
        old = torch.tensor([v for *_, v, _ in rows], device=self.device)
        returns = torch.tensor([r for *_, r in rows], device=self.device)
        loss, clip_fraction = value_loss(self.model(batch).float(), old, returns, self.options.value_clip)
        accelerator.backward(loss)
        if max_grad_norm:
            accelerator.clip_grad_norm_(self.model.parameters(), max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"value_loss": loss.item(), "value_clip_fraction": clip_fraction}

    def save(self, directory: Path) -> None:
        """Weights and optimizer into `directory` (moved into the checkpoint's trainer_state/)."""
        module = getattr(self.model, "module", self.model)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(directory / CRITIC_WEIGHTS)
        )
        torch.save(getattr(self.optimizer, "optimizer", self.optimizer).state_dict(), directory / CRITIC_OPTIMIZER)

    def load(self, state_dir: Path) -> None:
        """Restores what `save` wrote (before `prepare`)."""
        if not (state_dir / CRITIC_WEIGHTS).is_file():
            raise FileNotFoundError(f"{state_dir} has no {CRITIC_WEIGHTS}: it was not written by a ppo run")
        self.model.load_state_dict(load_file(str(state_dir / CRITIC_WEIGHTS)))
        self.optimizer.load_state_dict(torch.load(state_dir / CRITIC_OPTIMIZER, weights_only=True, map_location="cpu"))
