"""Options that only a random-init build takes: its image normalization and the scale of its word embeddings.

A pretrained VLM keeps the normalization and the embeddings it was trained with, so `base_vlm` refuses them.
The tiny random-init builds (tests, demo, the toy experiments) need them: docs/results/toy_root_causes.md, "The last
colour", measures why the word embeddings' scale decides whether the instruction survives the residual stream.
`draw_added_rows` (any build, under ZeRO-3 only) draws the rows of added tokens that transformers' resize missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel

from vlablocks.core.partitioned import is_partitioned, whole

RANDOM_INIT_OPTIONS = ("image_mean", "image_std", "text_embedding_init_std", "tiny_tokenizer_corpora")


def check_random_init_options(config: Any) -> None:
    """config: a `VLMConfig`. Raises ValueError on an option that cannot apply (with base_vlm, or out of range)."""
    for name in RANDOM_INIT_OPTIONS:
        if getattr(config, name) is not None and config.base_vlm:
            raise ValueError(
                f"vlm.{name} applies to random-init builds only; base_vlm {config.base_vlm} keeps what it was "
                f"trained with: drop vlm.{name}"
            )
    for name in ("image_mean", "image_std"):
        value = getattr(config, name)
        if value is not None and (len(value) != 3 or (name == "image_std" and min(value) <= 0)):
            raise ValueError(f"vlm.{name} must be 3 per-channel numbers (0-1 scale, std > 0), got {list(value)}")
    if config.text_embedding_init_std is not None and config.text_embedding_init_std <= 0:
        raise ValueError(f"vlm.text_embedding_init_std must be > 0, got {config.text_embedding_init_std}")


def set_image_normalization(image_processor: Any, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
    """x' = (x - mean) / std per channel (0-1 scale) in the processor the VLM saves; None keeps the family's."""
    if mean is not None:
        image_processor.image_mean = [float(v) for v in mean]
    if std is not None:
        image_processor.image_std = [float(v) for v in std]


def rescale_embedding_rows(model: PreTrainedModel, std: float | None, start: int) -> None:
    """Input-embedding rows `start:`, drawn N(0, initializer_range) by transformers, -> N(0, std); None: unchanged.

    The draw is scaled rather than drawn again, so the random stream, and every other initial weight, stays what it
    is without the option.
    """
    if std is None:
        return
    weight = model.get_input_embeddings().weight
    with whole(weight):  # partitioned already under ZeRO-3 (vlablocks/core/partitioned.py)
        weight[start:].mul_(std / model.config.text_config.initializer_range)


def draw_added_rows(model: PreTrainedModel, start: int) -> None:
    """Rows `start:` of the input embeddings and of an untied LM head -> N(0, initializer_range) (a head's bias 0),
    what `resize_token_embeddings(mean_resizing=False)` draws, for a model whose parameters are partitioned (ZeRO-3).

    transformers builds the resized layers inside the active `zero.Init`, so they are partitioned before its
    `_init_weights` runs on them: that draw acts on empty tensors and the added rows would keep nn.Embedding's N(0, 1)
    and nn.Linear's uniform default. Drawn again here, gathered (vlablocks/core/partitioned.py). Unpartitioned models
    are left as they are.
    """
    std = model.config.text_config.initializer_range
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    layers = [embeddings] if head is None or head.weight is embeddings.weight else [embeddings, head]
    for layer in layers:
        if not is_partitioned(layer.weight):
            continue
        with whole(layer):
            layer.weight[start:].normal_(mean=0.0, std=std)
            if getattr(layer, "bias", None) is not None:
                layer.bias[start:].zero_()
