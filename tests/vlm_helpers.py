"""Shared test helper: raw view/prompt dicts -> the VLM's inputs, through the processor's tokenize step."""

from __future__ import annotations

from vlablocks.processor.batch import VLMInputs
from vlablocks.processor.steps import VLMTokenize


def encode(vlm, examples: list[dict], suffix: str = "") -> VLMInputs:
    """examples: [{"views": [...], "prompt": str, optional "answer": str}] -> VLMInputs on the VLM's device."""
    return VLMTokenize(vlm.processor, vlm.view_size, vlm.patch_size, suffix=suffix)(examples).to(vlm.device)
