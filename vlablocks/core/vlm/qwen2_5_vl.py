"""Qwen2.5-VL backbone: transformers' `Qwen2_5_VLForConditionalGeneration` and `Qwen2_5_VLProcessor`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from vlablocks.core.registry import VLMS
from vlablocks.core.vlm.base import VLMBackbone, VLMConfig
from vlablocks.core.vlm.layout import VLMLayout, packed_vision_inputs
from vlablocks.core.vlm.tokenizer import TINY_CHAT_TEMPLATE

# Published Qwen2.5-VL architectures (config.json of Qwen/Qwen2.5-VL-{3B,7B}-Instruct).
_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "hidden_act": "silu",
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
_ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
QWEN2_5_VL_ARCHS: dict[str, dict[str, Any]] = {
    "3b": {
        "text_config": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": _ROPE,
        },
        "vision_config": {**_VISION, "out_hidden_size": 2048},
        "tie_word_embeddings": True,
    },
    "7b": {
        "text_config": {
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": _ROPE,
        },
        "vision_config": {**_VISION, "out_hidden_size": 3584},
        "tie_word_embeddings": False,
    },
}


def mrope_section(head_dim: int) -> list[int]:
    """Temporal/height/width split of the rotary half-dimension, in Qwen2.5-VL's 16:24:24 proportion."""
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


@dataclass(frozen=True)
class Qwen25VLConfig(VLMConfig):
    name: str = "qwen2_5_vl"


@VLMS.register("qwen2_5_vl")
class Qwen25VL(VLMBackbone):
    """Qwen2.5-VL (local checkpoint, or random-init tiny / 3b / 7b); multi-view, layerwise hidden states, LoRA.

    See `VLMBackbone` for inputs, outputs, `vision_hook` and `vision_position_encoding` ("sincos2d"
    adds a fixed 2-D sin-cos code of each merged vision token's (row, col) to its embedding).
    Views are resized to multiples of 28 pixels (patch 14 x merge 2).
    """

    Config = Qwen25VLConfig
    model_type = "qwen2_5_vl"
    model_class = Qwen2_5_VLForConditionalGeneration
    model_config_class = Qwen2_5_VLConfig
    processor_class = Qwen2_5_VLProcessor
    ARCHS = QWEN2_5_VL_ARCHS

    def build_processor(self, tokenizer) -> Qwen2_5_VLProcessor:
        vision = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
        return Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(**vision),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(**vision),
            chat_template=TINY_CHAT_TEMPLATE,
        )

    def vision_inputs(self, grid_thw: torch.Tensor) -> dict[str, torch.Tensor | int]:
        """The packed-attention boundaries, window order and rotary cells, precomputed (vlm/layout.py)."""
        return packed_vision_inputs(self, grid_thw)

    def image_features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, layout: VLMLayout) -> Any:
        """transformers' `get_image_features` with the layout's precomputed tower inputs and per-view split sizes:
        the same arithmetic, without its host-side reads of grid_thw."""
        visual = self.model.model.visual
        out = visual(pixel_values.type(visual.dtype), grid_thw=grid_thw, return_dict=True, **layout.vision_inputs)
        out.pooler_output = torch.split(out.pooler_output, layout.view_token_counts)
        return out

    def prompt_inputs(self, kwargs: dict, features: Any, layout: VLMLayout) -> dict:
        """The input embeddings with the vision features scattered in at the image tokens: what the multimodal model
        does itself, less its placeholder-count check, which reads a tensor on the host (the layout checked the
        counts when it was built)."""
        embeds = self.model.model.get_input_embeddings()(kwargs["input_ids"])
        image = torch.cat(features.pooler_output, dim=0).to(embeds.device, embeds.dtype)
        return {**kwargs, "inputs_embeds": embeds.masked_scatter(layout.tokens.vision_mask.unsqueeze(-1), image)}

    def tiny_numbers(self) -> dict[str, Any]:
        c = self.config
        head_dim = c.tiny_hidden_size // c.tiny_num_heads
        return {
            "text_config": {
                "hidden_size": c.tiny_hidden_size,
                "intermediate_size": 2 * c.tiny_hidden_size,
                "num_hidden_layers": c.tiny_num_layers,
                "num_attention_heads": c.tiny_num_heads,
                "num_key_value_heads": max(1, c.tiny_num_heads // 2),
                "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-6,
                "rope_parameters": {**_ROPE, "mrope_section": mrope_section(head_dim)},
            },
            "vision_config": {
                **_VISION,
                "depth": c.tiny_vision_depth,
                "hidden_size": c.tiny_vision_hidden_size,
                "intermediate_size": 2 * c.tiny_vision_hidden_size,
                "num_heads": max(1, c.tiny_vision_hidden_size // 32),
                "fullatt_block_indexes": [c.tiny_vision_depth - 1],
                "out_hidden_size": c.tiny_hidden_size,
            },
            "tie_word_embeddings": False,
        }
