"""VLM backbones (registry: VLMS): Qwen2.5-VL and Qwen3-VL over transformers' own classes."""

from vlablocks.core.vlm.base import LoraOptions, VLMBackbone, VLMConfig, VLMOutput
from vlablocks.core.vlm.vision import VisionHookInfo

__all__ = ["LoraOptions", "VLMBackbone", "VLMConfig", "VLMOutput", "VisionHookInfo"]
