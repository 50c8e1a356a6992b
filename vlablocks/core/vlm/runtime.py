"""Runtime choices and checks for building a VLM (dtype, attention kernel, checkpoint dir) and constrained decoding
(the allowed ids, tempered log-probabilities)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel


def allowed_ids(allowed_token_ids: Sequence[int], stop_token_id: int, vocab_size: int) -> list[int]:
    """The ids constrained decoding may emit: `allowed_token_ids` + `stop_token_id`, sorted, checked against the
    vocabulary."""
    if not allowed_token_ids:
        raise ValueError("allowed_token_ids is empty; pass the ids decoding may emit")
    allowed = sorted({*map(int, allowed_token_ids), int(stop_token_id)})
    if allowed[0] < 0 or allowed[-1] >= vocab_size:
        raise ValueError(f"allowed ids must lie in [0, {vocab_size}), got {allowed[0]}..{allowed[-1]}")
    return allowed


def check_temperature(temperature: float) -> None:
    """ValueError unless `temperature` > 0 (sampling divides the logits by it)."""
    if not temperature > 0:  # also refuses nan
        raise ValueError(
            f"sampling temperature must be > 0, got {temperature}; pass a positive temperature "
            "(sample_actions decodes greedily)"
        )


def tempered_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits: [..., K] of the K allowed ids -> float32 log_softmax(logits / temperature) [..., K].

    The constrained distribution: every id outside the K has probability 0 (logit -inf), so it is left out.
    """
    check_temperature(temperature)
    return (logits.float() / temperature).log_softmax(-1)


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}")
    return getattr(torch, name)


def resolve_attn_implementation(name: str) -> str:
    if name != "auto":
        return name
    has_flash = importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if has_flash and torch.cuda.is_available() else "sdpa"


def check_checkpoint_dir(path: str) -> Path:
    """A local checkpoint dir with config.json and safetensors weights, else FileNotFoundError."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"base_vlm {path}: no such directory (set base_vlm to a local checkpoint dir)")
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"base_vlm {path}: no config.json; is this a saved transformers checkpoint?")
    if not any(directory.glob("*.safetensors")):
        raise FileNotFoundError(f"base_vlm {path}: no *.safetensors weights (found: {_listing(directory)})")
    if not (directory / "tokenizer.json").is_file() and not (directory / "vocab.json").is_file():
        raise FileNotFoundError(
            f"base_vlm {path}: no tokenizer (tokenizer.json or vocab.json + merges.txt); save the processor there too"
        )
    return directory


def _listing(directory: Path) -> str:
    names = sorted(p.name for p in directory.iterdir())
    return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") if names else "nothing"


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Activation (gradient) checkpointing of every layer, non-reentrant (works with frozen inputs)."""
    if getattr(model, "activation_checkpointing_enable", None) is not None:  # a transformers release's API
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers releases before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
