"""The VLM backbone contract: config, typed output, and the shared wrapper around a Qwen-VL model.

A family (Qwen2.5-VL, Qwen3-VL) subclasses `VLMBackbone` and says which transformers classes it
uses, its published architectures and its tiny build; everything else (input preparation, vision
hooks, hidden states, special tokens, LoRA) lives here, once; decoding is vlablocks/core/vlm/decoding.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin

from vlablocks.core.batch import VLMInputs
from vlablocks.core.vlm import inputs as vlm_inputs
from vlablocks.core.vlm.attention import with_group_attention
from vlablocks.core.vlm.layout import VLMLayout, build_layout
from vlablocks.core.vlm.lora import inject_lora, merge_lora
from vlablocks.core.vlm.random_init import (
    check_random_init_options,
    draw_added_rows,
    rescale_embedding_rows,
    set_image_normalization,
)
from vlablocks.core.vlm.runtime import (
    check_checkpoint_dir,
    enable_checkpointing,
    resolve_attn_implementation,
    resolve_dtype,
)
from vlablocks.core.vlm.tokenizer import tiny_tokenizer
from vlablocks.core.vlm.vision import VisionHookInfo, VisionTokens, check_hook_output, sincos_2d

# Config fields of the Qwen-VL special tokens, looked up in the tokenizer for random-init builds.
VISION_TOKENS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}

VisionHook = Callable[[torch.Tensor, VisionHookInfo], torch.Tensor]


@dataclass(frozen=True)
class LoraOptions:
    """LoRA through peft (see vlablocks/core/vlm/lora.py for how `target_modules` is matched)."""

    enabled: bool = False
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    apply_to: Literal["llm", "vision", "both"] = "llm"


@dataclass(frozen=True)
class VLMConfig:
    """The `framework.vlm:` section. Registered VLM classes use it (with their `name`) as `Config`."""

    name: str = "qwen2_5_vl"
    arch: Literal["tiny", "2b", "3b", "4b", "7b", "8b"] = "tiny"  # random init when base_vlm is None
    base_vlm: str | None = None  # local checkpoint dir: model and processor, local_files_only
    image_size: int | list[int] = 112  # every view -> image_size^2 (or [height, width]), see view_size
    attn_implementation: str = "auto"  # auto: flash_attention_2 with flash-attn and CUDA, else sdpa
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU; or float32 / bfloat16 / float16
    gradient_checkpointing: bool = False
    vision_position_encoding: Literal["none", "sincos2d"] = "none"
    tiny_hidden_size: int = 128
    tiny_num_layers: int = 2
    tiny_num_heads: int = 4
    tiny_vision_hidden_size: int = 64
    tiny_vision_depth: int = 2
    # Random-init builds only: the image processor's per-channel mean / std (0-1 scale) in x' = (x - mean) / std.
    # None keeps the family's (Qwen2.5-VL: CLIP's). A pretrained VLM keeps the normalization it was trained with.
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    # Random-init builds only: the std of the token-embedding rows (None: the family's initializer_range, 0.02), for
    # the prompt's words to hold their own against the vision tokens in the residual stream (docs/results/toy_root_causes.md).
    text_embedding_init_std: float | None = None
    # Random-init builds only: extra built-in corpora the tiny tokenizer is trained on (vlm/tokenizer.py
    # EXTRA_CORPORA; "vqa" makes question words and one-word answers single tokens). None: the robot corpus alone.
    tiny_tokenizer_corpora: list[str] | None = None
    lora: LoraOptions = field(default_factory=LoraOptions)


@dataclass
class VLMOutput:
    """What `VLMBackbone.forward` returns (B samples, L tokens, H hidden size).

    last_hidden_state: [B, L, H]  after the final norm (== hidden_states[-1])
    hidden_states:     num_layers + 1 tensors [B, L, H]; [0] is the input embeddings
    attention_mask:    [B, L]     1 at real tokens (padding is on the left)
    input_ids:         [B, L]
    token_positions:   requested special token id -> [B, n] long positions of its n occurrences
    vision_mask:       [B, L] bool, True at image-token positions
    vision_positions:  [B, L, 2] float (row, col) of the merged patch centre in its view, in [0, 1]; 0 elsewhere
    view_index:        [B, L] long view of each vision token within its sample, -1 for text
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]
    attention_mask: torch.Tensor
    input_ids: torch.Tensor
    token_positions: dict[int, torch.Tensor]
    vision_mask: torch.Tensor
    vision_positions: torch.Tensor
    view_index: torch.Tensor


class VLMBackbone(nn.Module):
    """A Qwen-VL model (transformers' own class) with its processor, fed raw multi-view examples.

    Built from `base_vlm` (a local checkpoint: `from_pretrained(local_files_only=True)` for model and
    processor) or, when that is None, randomly initialised from `arch` (`tiny` for tests and demos,
    published sizes for GPU benchmarks) with a locally trained Qwen-style tokenizer.

    Its processor (`self.processor`, transformers' own) is what the framework's processor pipeline uses to
    build the prompt and pixels (vlablocks/core/processor/pipeline.py `VLMTokenize`); `forward(inputs,
    requested_token_ids, vision_hook)` takes those tensors, runs the vision tower, lets `vision_hook(image_embeds [N, H], info) -> [N, H]` modulate the merged vision
    tokens before they are scattered into the LLM input, and returns every layer's hidden states.

    vision_position_encoding: "sincos2d" adds a fixed 2-D sin-cos encoding of each merged vision
    token's integer (row, col) in its view to the vision embeddings (before any `vision_hook`).
    A randomly initialised model carries position only through rotary attention, so its token values
    hold little absolute position; this makes "where in the view" readable from the tokens themselves.
    "none" (default) leaves the embeddings as the vision tower made them.
    """

    Config: ClassVar[type] = VLMConfig
    model_type: ClassVar[str]  # `config.json` model_type of this family
    model_class: ClassVar[type[PreTrainedModel]]
    model_config_class: ClassVar[type[PretrainedConfig]]
    processor_class: ClassVar[type[ProcessorMixin]]
    ARCHS: ClassVar[dict[str, dict[str, Any]]]  # published sizes: arch -> {"text_config", "vision_config", ...}

    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        self.config = config
        dtype = resolve_dtype(config.dtype)
        attn = resolve_attn_implementation(config.attn_implementation)
        check_random_init_options(config)
        if config.base_vlm:
            model, processor = self._load_pretrained(config.base_vlm, dtype, attn)
        else:
            processor = self.build_processor(tiny_tokenizer(extra=tuple(config.tiny_tokenizer_corpora or ())))
            set_image_normalization(processor.image_processor, config.image_mean, config.image_std)
            model_config = self.model_config(config.arch, processor.tokenizer)
            model = self.model_class._from_config(model_config, dtype=dtype, attn_implementation=attn)
            model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
            model.generation_config.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
            rescale_embedding_rows(model, config.text_embedding_init_std, start=0)
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        vision = model.config.vision_config
        self.patch_size = vision.patch_size
        self.merge_size = vision.spatial_merge_size
        self.view_size = vlm_inputs.view_size(config.image_size, self.patch_size * self.merge_size)
        self.hidden_size = model.config.text_config.hidden_size
        self.num_layers = model.config.text_config.num_hidden_layers
        self.image_token_id = self.token_id(processor.image_token)
        self.__dict__["_lora_model"] = None  # peft's LoraModel; kept out of the module tree (same params)
        if config.gradient_checkpointing:
            enable_checkpointing(model)
        if config.lora.enabled:
            self.enable_lora(config.lora)
        self.train()  # from_pretrained leaves eval mode; a fresh module trains, whichever way it was built

    # ------------------------------------------------------------------------------------------
    # Family hooks.

    def build_processor(self, tokenizer) -> ProcessorMixin:
        """The family's processor around `tokenizer` (tiny builds)."""
        raise NotImplementedError

    def model_config(self, arch: str, tokenizer) -> PretrainedConfig:
        """The transformers config of a random-init `arch`, wired to `tokenizer`'s special-token ids."""
        numbers = self.arch_numbers(arch)
        ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in VISION_TOKENS.items()}
        text = {
            **numbers["text_config"],
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id,
        }
        text["vocab_size"] = max(text.get("vocab_size", 0), len(tokenizer))
        return self.model_config_class(
            text_config=text,
            vision_config=dict(numbers["vision_config"]),
            tie_word_embeddings=numbers["tie_word_embeddings"],
            **ids,
        )

    def arch_numbers(self, arch: str) -> dict[str, Any]:
        """{"text_config": ..., "vision_config": ..., ...} for `arch` (published or tiny)."""
        if arch == "tiny":
            return self.tiny_numbers()
        if arch not in self.ARCHS:
            raise ValueError(
                f"{self.model_type} has no published arch {arch!r} (available: tiny, {', '.join(self.ARCHS)})"
            )
        return self.ARCHS[arch]

    def tiny_numbers(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_pretrained(self, path: str, dtype: torch.dtype, attn: str) -> tuple[PreTrainedModel, ProcessorMixin]:
        directory = check_checkpoint_dir(path)
        config = PretrainedConfig.get_config_dict(str(directory))[0]
        if config.get("model_type") != self.model_type:
            raise ValueError(
                f"base_vlm {path} holds a {config.get('model_type')!r} model, not {self.model_type!r}; "
                "pick the matching framework.vlm.name"
            )
        model = self.model_class.from_pretrained(
            directory, local_files_only=True, dtype=dtype, attn_implementation=attn
        )
        try:
            processor = self.processor_class.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise FileNotFoundError(
                f"base_vlm {path}: cannot load the processor/tokenizer ({exc})".splitlines()[0]
            ) from exc
        return model, processor

    # ------------------------------------------------------------------------------------------
    # Tokens.

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def token_id(self, token: str) -> int:
        """The id of a token in the vocabulary; ValueError when the tokenizer does not know it."""
        vocab = self.tokenizer.get_vocab()
        if token not in vocab:
            raise ValueError(f"token {token!r} is not in the tokenizer; add it with add_special_tokens([...])")
        return vocab[token]

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Adds `tokens` (e.g. action queries) as special tokens, grows the embeddings if needed -> their ids."""
        new = [t for t in tokens if t not in self.tokenizer.get_vocab()]
        if new:
            self.tokenizer.add_tokens(new, special_tokens=True)
        rows = self.model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > rows:
            # New rows come from the model's initializer: mean_resizing would fit a covariance over
            # ~150k x H pretrained rows, tens of seconds on CPU for a 7B model.
            self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
            draw_added_rows(self.model, start=rows)  # under ZeRO-3 transformers' draw missed them
            rescale_embedding_rows(self.model, self.config.text_embedding_init_std, start=rows)
        return [self.token_id(t) for t in tokens]

    # ------------------------------------------------------------------------------------------
    # Vision features.

    def pixel_values(self, patches: torch.Tensor) -> torch.Tensor:
        """patches: uint8 [P, C, p, p] (the processor's) -> the vision tower's input [P, C * t * p * p] float32.

        The arithmetic of transformers' Qwen2-VL image processor, on this device: x' = (x - 255 * mean) /
        (255 * std) per channel (rescale 1/255 fused into the normalization), each patch repeated over the
        t = temporal_patch_size frames of a still image.
        """
        image_processor = self.processor.image_processor
        if not (image_processor.do_rescale and image_processor.do_normalize):
            raise ValueError(f"{self.model_type}: the image processor must rescale and normalize (as Qwen-VL's do)")
        scale = 1.0 / image_processor.rescale_factor
        mean = torch.tensor(image_processor.image_mean, device=patches.device) * scale
        std = torch.tensor(image_processor.image_std, device=patches.device) * scale
        normalized = patches.to(torch.float32).sub_(mean[:, None, None]).div_(std[:, None, None])
        frames = image_processor.temporal_patch_size
        return normalized.unsqueeze(2).expand(-1, -1, frames, -1, -1).reshape(patches.shape[0], -1)

    def layout(self, inputs: VLMInputs, token_ids: Sequence[int] = ()) -> VLMLayout:
        """What a pass over `inputs` derives from their integer metadata (vlm/layout.py): the layout they carry
        (`inputs.layout`, precomputed before a compiled graph), else computed now, host-side, with the positions
        of `token_ids`."""
        return inputs.layout if inputs.layout is not None else build_layout(self, inputs, token_ids)

    def vision_inputs(self, grid_thw: torch.Tensor) -> dict[str, torch.Tensor | int]:
        """Family hook: the vision tower's inputs precomputed from grid_thw [V, 3] (vlm/layout.py); {} = none."""
        return {}

    def image_features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, layout: VLMLayout) -> Any:
        """Family hook: the vision tower over every view's patches -> its output, `pooler_output` a tuple of
        [n_v, H] merged tokens per view."""
        return self.model.model.get_image_features(pixel_values, grid_thw, return_dict=True)

    def prompt_inputs(self, kwargs: dict, features: Any, layout: VLMLayout) -> dict:
        """Family hook: the multimodal model's kwargs for a pass over the prompt (`kwargs`: model_kwargs + the
        layout's rotary position_ids) with the image `features` in place."""
        return {**kwargs, "mm_encoder_outputs": {"image": features}}

    def encode_images(
        self, inputs: VLMInputs, vision_hook: VisionHook | None = None, layout: VLMLayout | None = None
    ) -> tuple[Any, VisionTokens | VisionHookInfo]:
        """Runs the vision tower and applies the position encoding and `vision_hook`.

        -> (the model's image-features output, to pass as `mm_encoder_outputs["image"]`; the token layout).
        """
        layout = layout or self.layout(inputs)
        tokens = layout.tokens
        pixel_values = self.pixel_values(inputs.pixel_patches)
        features = self.image_features(pixel_values, inputs.image_grid_thw, layout)
        embeds = torch.cat(features.pooler_output, dim=0)
        if self.config.vision_position_encoding == "sincos2d":
            embeds = embeds + sincos_2d(tokens.grid_rc, embeds.shape[-1]).to(embeds.dtype)
        if vision_hook is not None:
            tokens = VisionHookInfo.of(
                tokens,
                text_embeds=self.model.get_input_embeddings()(inputs.input_ids),
                attention_mask=inputs.attention_mask,
                input_ids=inputs.input_ids,
            )
            embeds = check_hook_output(vision_hook(embeds, tokens), embeds)
        sizes = [len(chunk) for chunk in features.pooler_output]
        features.pooler_output = tuple(torch.split(embeds, sizes))
        return features, tokens

    # ------------------------------------------------------------------------------------------
    # Forward (decoding: vlablocks/core/vlm/decoding.py).

    def forward(
        self,
        inputs: VLMInputs,
        requested_token_ids: Sequence[int] = (),
        vision_hook: VisionHook | None = None,
        bidirectional_token_ids: Sequence[int] = (),
    ) -> VLMOutput:
        """inputs: the processor's VLMInputs (on this device) -> hidden states of every layer (see VLMOutput).

        bidirectional_token_ids: tokens whose positions attend to each other (the rest stays causal; vlm/attention.py).
        A precomputed `inputs.layout` must hold the positions of `requested_token_ids`.
        """
        layout = self.layout(inputs, requested_token_ids)
        features, _ = self.encode_images(inputs, vision_hook, layout)
        kwargs = {**self.model_kwargs(inputs), "position_ids": layout.rope_positions}
        if bidirectional_token_ids:
            kwargs = with_group_attention(self.model.model, kwargs, bidirectional_token_ids)
        out = self.model.model(
            **self.prompt_inputs(kwargs, features, layout), output_hidden_states=True, use_cache=False, return_dict=True
        )
        return VLMOutput(
            last_hidden_state=out.last_hidden_state,
            hidden_states=tuple(out.hidden_states),
            attention_mask=inputs.attention_mask,
            input_ids=inputs.input_ids,
            token_positions={t: layout.positions_of(t) for t in requested_token_ids},
            vision_mask=layout.tokens.vision_mask,
            vision_positions=layout.vision_positions,
            view_index=layout.view_index,
        )

    def model_kwargs(self, inputs: VLMInputs) -> dict[str, torch.Tensor]:
        """The transformers model's text-side inputs; `mm_token_type_ids` (1 at image tokens, what transformers'
        processor emits) is derived here rather than shipped in every batch."""
        return {**inputs.model_kwargs(), "mm_token_type_ids": self.token_types(inputs.input_ids)}

    def token_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [B, L] -> [B, L] long, 1 at image tokens, 0 elsewhere."""
        return (input_ids == self.image_token_id).long()

    # ------------------------------------------------------------------------------------------
    # LoRA and saving.

    @property
    def lora_enabled(self) -> bool:
        return self.__dict__["_lora_model"] is not None

    def enable_lora(self, options: LoraOptions | None = None) -> None:
        """Wraps the configured Linear layers with LoRA adapters (in place); freezes everything else."""
        if self.lora_enabled:
            raise ValueError("LoRA is already enabled on this backbone")
        options = options or self.config.lora
        self.__dict__["_lora_model"] = inject_lora(self.model, options)

    def merge_lora(self) -> PreTrainedModel:
        """Folds the LoRA deltas into the weights and removes the adapters -> the plain HF model."""
        if not self.lora_enabled:
            raise ValueError("merge_lora: LoRA is not enabled on this backbone")
        self.model = merge_lora(self.__dict__["_lora_model"])
        self.__dict__["_lora_model"] = None
        return self.model

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes model (safetensors) and processor so that `base_vlm: <directory>` rebuilds this backbone."""
        if self.lora_enabled:
            raise ValueError("save_pretrained: merge the LoRA adapters first (merge_lora())")
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)
