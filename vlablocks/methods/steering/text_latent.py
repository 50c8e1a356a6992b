"""Text latents: a task's mean residual stream at its instruction's tokens (Li 2025, "Task reconstruction and
extrapolation for pi0 using text latent"), extracted from demonstrations, saved, interpolated and decoded.

For a task tau (one instruction string) with demonstration frames i = 1..N_tau, each of whose prompts has the
instruction's P_tau text tokens (vlm/steering.py `instruction_mask`), and h_r^i[p] [H] the residual stream at
index r (0 = the embeddings, r = the output of decoder layer r - 1; R = num_layers + 1 indices) at the p-th:

    positions:  z_r^tau[p] = (1 / N_tau) sum_i h_r^i[p]                        [R, P_tau, H]
    mean:       m_r^tau    = (1 / P_tau) sum_p z_r^tau[p]                      [R, H]

Reconstruction writes z^tau back at the text positions of a blank prompt of P_tau filler tokens (every index,
`add` or `blend`, vlm/steering.py). Temporal interpolation between base tasks A and B at policy call k:

    z(k) = (1 - w(k)) z^A + w(k) z^B,   step: w(k) = [k >= k_s],   linear: w(k) = min(1, k / k_s)

Decoding maps each position's latent at one index r to the vocabulary tokens whose input embeddings are nearest
by cosine similarity after removing the common component (the mean latent over every task's positions at r, and
the mean embedding): argmax_v cos(z_r[p] - mean_r, e_v - mean_v). The result is an (often unreadable) prompt
that can be given to the policy as text.

File format (safetensors, no pickle): tensors "task_<i>.positions" [R, P_i, H] and "task_<i>.mean" [R, H];
metadata {"tasks": JSON list of the task strings, "counts": JSON list of N_i, "num_layers", "hidden_size"}.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlablocks.core.atomic import as_umask_allows
from vlablocks.core.vlm.steering import capture_residuals, instruction_mask

SCHEDULES = ("step", "linear")


@dataclass
class TextLatents:
    """tasks[i]'s latents: positions[i] [R, P_i, H], mean[i] [R, H] (R residual indices), from counts[i] frames."""

    tasks: list[str]
    positions: list[torch.Tensor]
    mean: list[torch.Tensor]
    counts: list[int]

    def index(self, task: str) -> int:
        if task not in self.tasks:
            shown = ", ".join(repr(t) for t in self.tasks[:8]) + (" ..." if len(self.tasks) > 8 else "")
            raise KeyError(
                f"no text latent for task {task!r}: the file holds {len(self.tasks)} tasks ({shown}); "
                "extract it from demonstrations of that instruction (vlablocks text-latent extract)"
            )
        return self.tasks.index(task)

    def vector(self, task: str, kind: str = "positions") -> torch.Tensor:
        """-> [R, P, H] (positions) or [R, 1, H] (mean) for `task`."""
        if kind not in ("positions", "mean"):
            raise ValueError(f"latent kind must be 'positions' or 'mean', got {kind!r}")
        i = self.index(task)
        return self.positions[i] if kind == "positions" else self.mean[i][:, None]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for i, (positions, mean) in enumerate(zip(self.positions, self.mean, strict=True)):
            tensors[f"task_{i}.positions"] = positions.contiguous()
            tensors[f"task_{i}.mean"] = mean.contiguous()
        num_layers, hidden = self.mean[0].shape if self.mean else (0, 0)
        metadata = {
            "tasks": json.dumps(self.tasks),
            "counts": json.dumps(self.counts),
            "num_layers": str(num_layers),
            "hidden_size": str(hidden),
        }
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory; name the .safetensors file to write")
        partial = path.with_name(path.name + ".partial")
        try:
            save_file(tensors, str(partial), metadata=metadata)
            as_umask_allows(partial, directory=False)  # safetensors writes 0600
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)  # nothing half-written is left behind

    @classmethod
    def load(cls, path: str | Path) -> TextLatents:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"text latents {path}: no such file (write it with vlablocks text-latent extract)")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            if "tasks" not in metadata:
                raise ValueError("no 'tasks' metadata")
            tensors = load_file(str(path))
            tasks, counts = json.loads(metadata["tasks"]), json.loads(metadata["counts"])
            positions = [tensors[f"task_{i}.positions"] for i in range(len(tasks))]
            means = [tensors[f"task_{i}.mean"] for i in range(len(tasks))]
        except Exception as exc:  # safetensors' own errors (a truncated header) do not name the file
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise ValueError(
                f"{path} is not a readable text-latent file ({reason}): truncated or another format? "
                "write it again with vlablocks text-latent extract"
            ) from None
        return cls(tasks, positions, means, counts)


@torch.no_grad()
def extract(policy, batches: Iterable[list[dict]]) -> TextLatents:
    """Averages, per instruction string, the residual stream at its text positions over every frame given.

    policy: a Policy whose model has a VLM; batches: lists of raw samples (observations or training
    samples). -> TextLatents (tasks in order of first appearance).
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    vlm = policy.model.vlm
    for samples in batches:
        batch = policy.processor(samples, targets=False).to(policy.device)
        store: list[torch.Tensor] = []
        with capture_residuals(vlm, store):
            vlm(batch.vlm)
        stream = torch.stack(store, dim=1).float()  # [B, R, T, H]
        mask = instruction_mask(vlm, batch.vlm.input_ids)
        for row, sample in enumerate(samples):
            task = sample["prompt"]
            states = stream[row][:, mask[row]]  # [R, P, H]
            if task in sums and sums[task].shape != states.shape:
                raise ValueError(f"task {task!r} tokenized to {states.shape[1]} and {sums[task].shape[1]} text tokens")
            sums[task] = sums.get(task, 0) + states.cpu()
            counts[task] = counts.get(task, 0) + 1
    if not sums:
        raise ValueError("no samples to extract text latents from")
    tasks = list(sums)
    positions = [sums[t] / counts[t] for t in tasks]
    return TextLatents(tasks, positions, [p.mean(dim=1) for p in positions], [counts[t] for t in tasks])


def interpolation_weight(call: int, schedule: str, switch_at: int) -> float:
    """w(k) of the module docstring: the share of task B's latent at policy call `call` (0-based)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"latent schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if switch_at < 1:
        raise ValueError(f"--switch-at must be >= 1 policy call, got {switch_at}")
    if schedule == "step":
        return float(call >= switch_at)
    return min(1.0, call / switch_at)


def decode(
    framework, latent: torch.Tensor, top_k: int = 3, reference: torch.Tensor | None = None
) -> list[list[tuple[str, float]]]:
    """latent: [P, H] (one residual index's per-position latent) -> per position the `top_k` (token, cosine)
    nearest input embeddings of the VLM's vocabulary (special and added tokens excluded).

    reference: [N, H] latents (e.g. every task's positions at that index) whose mean is removed from the latent,
    as the vocabulary's mean is from the embeddings: deeper residual states share a large common direction that
    otherwise makes every position decode to the same token."""
    embeddings = framework.vlm.model.get_input_embeddings().weight.detach().float().cpu()  # [V, H]
    latent = latent.float()
    if reference is not None:
        latent = latent - reference.float().mean(dim=0)
        embeddings = embeddings - embeddings.mean(dim=0)
    tokenizer = framework.vlm.tokenizer
    unit = torch.nn.functional.normalize
    scores = unit(latent, dim=-1) @ unit(embeddings, dim=-1).T
    special = [i for i in tokenizer.all_special_ids if i < scores.shape[1]]
    added = [i for i in tokenizer.get_added_vocab().values() if i < scores.shape[1]]
    scores[:, special + added] = -2.0
    values, ids = scores.topk(top_k, dim=-1)
    return [
        [(tokenizer.convert_ids_to_tokens(int(i)), float(v)) for i, v in zip(row_ids, row_values, strict=True)]
        for row_ids, row_values in zip(ids, values, strict=True)
    ]


def decoded_prompt(framework, nearest: list[list[tuple[str, float]]]) -> str:
    """The top-1 tokens of `decode` as one prompt string."""
    return framework.vlm.tokenizer.convert_tokens_to_string([row[0][0] for row in nearest])
