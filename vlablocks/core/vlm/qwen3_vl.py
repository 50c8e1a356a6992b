"""Qwen3-VL backbone: transformers' `Qwen3VLForConditionalGeneration` and `Qwen3VLProcessor`.

Qwen3-VL injects DeepStack features (intermediate vision-tower layers) into the first LLM layers at
the vision positions; a `vision_hook` modulates the main merged vision tokens, DeepStack stays as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import (
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from vlablocks.core.registry import VLMS
from vlablocks.core.vlm.base import VLMBackbone, VLMConfig
from vlablocks.core.vlm.tokenizer import TINY_CHAT_TEMPLATE

# Published Qwen3-VL dense architectures (config.json of Qwen/Qwen3-VL-{2B,4B,8B}-Instruct).
# Qwen3-VL has no 3B/7B: `arch: 3b` / `7b` are refused with this list.
_VISION = {
    "hidden_act": "gelu_pytorch_tanh",
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_heads": 16,
    "num_position_embeddings": 2304,
}
_SMALL_VISION = {**_VISION, "depth": 24, "hidden_size": 1024, "intermediate_size": 4096}
_SMALL_VISION["deepstack_visual_indexes"] = [5, 11, 17]
_ROPE = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
_TEXT = {"head_dim": 128, "num_key_value_heads": 8, "max_position_embeddings": 262144, "rms_norm_eps": 1e-6}
QWEN3_VL_ARCHS: dict[str, dict[str, Any]] = {
    "2b": {
        "text_config": {
            **_TEXT,
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "rope_parameters": _ROPE,
        },
        "vision_config": {**_SMALL_VISION, "out_hidden_size": 2048},
        "tie_word_embeddings": True,
    },
    "4b": {
        "text_config": {
            **_TEXT,
            "vocab_size": 151936,
            "hidden_size": 2560,
            "intermediate_size": 9728,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "rope_parameters": _ROPE,
        },
        "vision_config": {**_SMALL_VISION, "out_hidden_size": 2560},
        "tie_word_embeddings": True,
    },
    "8b": {
        "text_config": {
            **_TEXT,
            "vocab_size": 151936,
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "rope_parameters": _ROPE,
        },
        "vision_config": {
            **_VISION,
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "out_hidden_size": 4096,
            "deepstack_visual_indexes": [8, 16, 24],
        },
        "tie_word_embeddings": False,
    },
}


def interleaved_mrope_section(head_dim: int) -> list[int]:
    """Temporal/height/width split of the rotary half-dimension, in Qwen3-VL's 24:20:20 proportion."""
    half = head_dim // 2
    spatial = round(half * 20 / 64)
    return [half - 2 * spatial, spatial, spatial]


@dataclass(frozen=True)
class Qwen3VLBackboneConfig(VLMConfig):
    name: str = "qwen3_vl"


@VLMS.register("qwen3_vl")
class Qwen3VL(VLMBackbone):
    """Qwen3-VL (local checkpoint, or random-init tiny / 2b / 4b / 8b); multi-view, layerwise hidden states, LoRA.

    See `VLMBackbone` for inputs, outputs, `vision_hook` and `vision_position_encoding` ("sincos2d"
    adds a fixed 2-D sin-cos code of each merged vision token's (row, col) to its embedding).
    Views are resized to multiples of 32 pixels (patch 16 x merge 2). The model gets `mm_token_type_ids`
    (`VLMBackbone.model_kwargs`), which transformers 5 needs next to input_ids when images are passed.
    """

    Config = Qwen3VLBackboneConfig
    model_type = "qwen3_vl"
    model_class = Qwen3VLForConditionalGeneration
    model_config_class = Qwen3VLConfig
    processor_class = Qwen3VLProcessor
    ARCHS = QWEN3_VL_ARCHS

    def build_processor(self, tokenizer) -> Qwen3VLProcessor:
        vision = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2}
        normalize = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
        return Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(**vision, **normalize),
            tokenizer=tokenizer,
            video_processor=Qwen3VLVideoProcessor(**vision, **normalize),
            chat_template=TINY_CHAT_TEMPLATE,
        )

    def tiny_numbers(self) -> dict[str, Any]:
        c = self.config
        head_dim = c.tiny_hidden_size // c.tiny_num_heads
        return {
            "text_config": {
                **_TEXT,
                "head_dim": head_dim,
                "hidden_size": c.tiny_hidden_size,
                "intermediate_size": 2 * c.tiny_hidden_size,
                "num_hidden_layers": c.tiny_num_layers,
                "num_attention_heads": c.tiny_num_heads,
                "num_key_value_heads": max(1, c.tiny_num_heads // 2),
                "max_position_embeddings": 4096,
                "rope_parameters": {**_ROPE, "mrope_section": interleaved_mrope_section(head_dim)},
            },
            "vision_config": {
                **_VISION,
                "depth": c.tiny_vision_depth,
                "hidden_size": c.tiny_vision_hidden_size,
                "intermediate_size": 2 * c.tiny_vision_hidden_size,
                "num_heads": max(1, c.tiny_vision_hidden_size // 32),
                "num_position_embeddings": 64,
                "deepstack_visual_indexes": [0],
                "out_hidden_size": c.tiny_hidden_size,
            },
            "tie_word_embeddings": False,
        }
