"""Does a trained policy read its instruction, and where does its head look? Probes on a checkpoint.

    python -m vlablocks.tools.probes.grounding_probe --ckpt runs/x/checkpoints/step_1500 --data data/toy

instruction_loss_ratio   the training loss on frames with their own prompts vs the same frames with the
                         prompts rolled by one (mostly another colour), same noise and times:
                         ratio = loss(swapped) / loss(own). About 1: the loss does not depend on the
                         instruction; well above 1: the model uses it.
context_attention_mass   for heads that cross-attend to VLM tokens: the share of cross-attention weight
                         on vision tokens, on the colour words, on the other text (chat template,
                         the rest of the instruction) and on readout tokens, per DiT block.
hidden_gradient_share    |dL/dh| at the VLM's last hidden state, summed over the same token groups, as
                         shares: how much of the loss's pull reaches each group.
branch_gates             per DiT block, the mean |adaLN-Zero gate| of its self-attention, cross-attention
                         and MLP branches (all 0 at initialization): how open the path to the VLM is.
vlm_gradient_agreement   the VLM's parameter gradient on one batch under different noise/time draws:
                         mean pairwise cosine similarity (1 for a deterministic loss such as L1) and the
                         gradient norm. A low agreement means most of each step's update to the VLM is noise.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlablocks.core.config import load_config
from vlablocks.core.flags import FlagParser
from vlablocks.core.policy.policy import Policy
from vlablocks.core.training.components import build_train_dataset
from vlablocks.tools.toy.toy_scene import COLOURS

GROUPS = ("vision", "colour", "other_text", "readout")


def probe_samples(dataset, count: int, seed: int) -> list[dict]:
    """`count` random frames of a dataset (raw sample dicts)."""
    rng = np.random.default_rng(seed)
    return [dataset[int(i)] for i in rng.choice(len(dataset), size=count, replace=False)]


def rolled_prompts(samples: list[dict]) -> list[dict]:
    """The same frames, each with the next frame's prompt (the last takes the first's)."""
    prompts = [s["prompt"] for s in samples]
    return [{**s, "prompt": prompts[(i + 1) % len(samples)]} for i, s in enumerate(samples)]


@torch.no_grad()
def seeded_loss(policy: Policy, samples: list[dict], seed: int) -> float:
    """The action head's training loss on `samples` (without auxiliary terms such as the readout regression),
    with the noise and time draws fixed by `seed`."""
    batch = policy.processor(samples)
    torch.manual_seed(seed)
    losses = policy.model(batch)
    return losses.get("head_loss", losses["loss"]).item()


def instruction_loss_ratio(policy: Policy, samples: list[dict], draws: int = 4) -> dict[str, float]:
    """Mean over `draws` seeded draws of the own-prompt and rolled-prompt losses, and their ratio."""
    own = float(np.mean([seeded_loss(policy, samples, d) for d in range(draws)]))
    swapped = float(np.mean([seeded_loss(policy, rolled_prompts(samples), d) for d in range(draws)]))
    return {"loss_own": own, "loss_swapped": swapped, "ratio": swapped / own}


def token_groups(policy: Policy, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """[B, L] bool masks of the vision tokens, the colour words, the readout tokens and the other text."""
    vlm = policy.model.vlm
    colour_ids = {i for c in COLOURS for word in (c, f" {c}") for i in vlm.tokenizer.encode(word)}
    vision = input_ids == vlm.image_token_id
    colour = torch.isin(input_ids, torch.tensor(sorted(colour_ids)))
    auxiliary = getattr(policy.model, "auxiliary_losses", None)  # QwenOFT has none
    readouts = (auxiliary.token_ids if auxiliary is not None else None) or getattr(
        policy.model, "query_token_ids", None
    )
    readout = torch.isin(input_ids, torch.tensor(readouts or [-1]))  # readout tokens, or QwenOFT's action queries
    padding = input_ids == vlm.tokenizer.pad_token_id
    return {
        "vision": vision,
        "colour": colour,
        "readout": readout,
        "other_text": ~(vision | colour | readout | padding),
    }


def _shares(weights: torch.Tensor, groups: dict[str, torch.Tensor]) -> dict[str, float]:
    """weights: [B, L] non-negative -> each group's share of the total."""
    total = weights.sum()
    return {name: float((weights * groups[name]).sum() / total) for name in GROUPS}


@torch.no_grad()
def context_attention_mass(policy: Policy, samples: list[dict]) -> list[dict[str, float]]:
    """Per DiT block, the share of the head's cross-attention on each token group (attend: all only)."""
    blocks = getattr(getattr(policy.model, "action_model", None), "blocks", None)
    if blocks is None:
        return []
    batch = policy.processor(samples)
    groups = token_groups(policy, batch.vlm.input_ids)
    captured: list[torch.Tensor] = []

    def capture(module, args) -> None:
        x, keys, _, mask = args
        query = module._split(module.query(x))
        scores = query @ keys.transpose(-1, -2) / keys.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        captured.append(F.softmax(scores, dim=-1).mean(dim=(1, 2)))  # [B*, L]

    hooks = [block.cross_attn.register_forward_pre_hook(capture) for block in blocks]
    try:
        torch.manual_seed(0)
        policy.model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    repeats = captured[0].shape[0] // len(samples)
    return [_shares(w.view(len(samples), repeats, -1).mean(1), groups) for w in captured]


def hidden_gradient_share(policy: Policy, samples: list[dict]) -> dict[str, float]:
    """Shares of |dL/dh| (last VLM hidden state) over the token groups."""
    batch = policy.processor(samples)
    captured: dict[str, torch.Tensor] = {}
    forward: Callable = policy.model.vlm.forward

    def keep_grad(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.last_hidden_state.retain_grad()
        captured["h"] = out.last_hidden_state
        return out

    policy.model.vlm.forward = keep_grad
    try:
        torch.manual_seed(0)
        policy.model.zero_grad(set_to_none=True)
        policy.model(batch)["loss"].backward()
    finally:
        del policy.model.vlm.forward
    grad = captured["h"].grad.norm(dim=-1)  # [B, L]
    return _shares(grad, token_groups(policy, batch.vlm.input_ids))


def vlm_gradient_agreement(policy: Policy, samples: list[dict], draws: int = 4) -> dict[str, float]:
    """Mean pairwise cosine of the VLM's flattened parameter gradients over `draws` seeded draws, and their norm."""
    batch = policy.processor(samples)
    gradients = []
    for draw in range(draws):
        policy.model.zero_grad(set_to_none=True)
        torch.manual_seed(draw)
        policy.model(batch)["loss"].backward()
        gradients.append(torch.cat([p.grad.flatten() for p in policy.model.vlm.parameters() if p.grad is not None]))
    stacked = F.normalize(torch.stack(gradients), dim=1)
    cosine = stacked @ stacked.T
    pairs = cosine[~torch.eye(draws, dtype=torch.bool)]
    return {"mean_cosine": float(pairs.mean()), "grad_norm": float(torch.stack(gradients).norm(dim=1).mean())}


@torch.no_grad()
def branch_gates(policy: Policy, samples: list[dict]) -> list[dict[str, float]]:
    """Per DiT block: mean |gate| of the self-attention, cross-attention and MLP branches on this batch."""
    blocks = getattr(getattr(policy.model, "action_model", None), "blocks", None)
    if blocks is None:
        return []
    gates: list[dict[str, float]] = []

    def capture(module, args) -> None:
        mods = module.modulation(F.silu(args[1])).chunk(9, dim=-1)
        gates.append({name: float(mods[i].abs().mean()) for name, i in (("self", 2), ("cross", 5), ("mlp", 8))})

    hooks = [block.register_forward_pre_hook(capture) for block in blocks]
    try:
        torch.manual_seed(0)
        policy.model(policy.processor(samples))
    finally:
        for hook in hooks:
            hook.remove()
    return gates


def probe(policy: Policy, samples: list[dict]) -> dict:
    policy.model.eval()
    groups = token_groups(policy, policy.processor(samples).vlm.input_ids)
    return {
        "tokens_per_frame": {name: float(groups[name].sum()) / len(samples) for name in GROUPS},
        "instruction_loss": instruction_loss_ratio(policy, samples),
        "attention_mass_per_block": context_attention_mass(policy, samples),
        "hidden_gradient_share": hidden_gradient_share(policy, samples),
        "vlm_gradient_agreement": vlm_gradient_agreement(policy, samples),
        "branch_gates": branch_gates(policy, samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a checkpoint directory, run_dir/checkpoints/step_N")
    parser.add_argument("--data", required=True, help="the training dataset's root")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    policy = Policy.from_pretrained(args.ckpt)
    run_config = Path(args.ckpt).resolve().parents[1] / "config.yaml"  # the run's, with its dataset section
    experiment = load_config(run_config, [f"dataset.root={args.data}"])
    samples = probe_samples(build_train_dataset(experiment), args.frames, args.seed)
    print(json.dumps(probe(policy, samples), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
