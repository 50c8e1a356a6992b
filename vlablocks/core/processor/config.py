"""What a processor is built from, written as `<checkpoint>/processor/processor.json`: the policy's cameras and
sizes, the model-specific options (prompt suffix, FAST tokens, state tokens, geometry, embodiments) and the declared,
ordered list of per-sample steps (`sample_steps`; vlablocks/core/processor/sample_steps.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

FORMAT_VERSION = 1


@dataclass(frozen=True)
class FASTOptions:
    """Tokenized actions (QwenFAST): the FAST tokenizer's config and how its ids appear in the prompt."""

    scale: float = 20.0  # DCT coefficients are multiplied by this before rounding (pi0-FAST: 10; see docs)
    vocab_size: int = 1024  # BPE vocabulary upper bound (alphabet + merges)
    bpe_merges: bool = True  # false: one token per quantized DCT coefficient, T x D tokens per chunk
    path: str | None = None  # a directory written by FASTTokenizer.save: use that fitted tokenizer
    token_prefix: str = "<|fast_"  # FAST id i is the VLM token f"{token_prefix}{i}|>"
    stop_token: str = "<|im_end|>"  # ends the answer
    fit_max_chunks: int = 4000  # training chunks sampled to fit the tokenizer


@dataclass(frozen=True)
class StateTokenOptions:
    """The state in the prompt as text (pi0.5): each normalized dimension's bin, after the instruction."""

    num_bins: int = 256  # over the stats' range ([q01, q99] under q99 normalization); see steps.DiscretizeState
    label: str = "State:"  # the text before the bins: "...\nState: 131 7;"


@dataclass(frozen=True)
class ProcessorConfig:
    """Everything the processor needs, and the server's metadata. Written as `processor.json`."""

    camera_keys: tuple[str, ...]
    action_horizon: int
    action_dim: int
    state_dim: int
    embodiment: str  # the stats that serve requests without a dataset_name
    image_size: int | tuple[int, ...]  # as configured (metadata for clients)
    view_size: tuple[int, int]  # every view is resized to this (height, width)
    patch_size: int
    prompt_suffix: str = ""  # after the assistant start, e.g. action-query tokens
    use_state: bool = True
    fast: FASTOptions | None = None
    state_tokens: StateTokenOptions | None = None  # the state written into the prompt as bins (DiscretizeState)
    geometry: dict | None = None  # {"size": [h, w], "use_depth": bool, "fov_degrees": float, "next_frame": bool}
    vision_language: bool = True  # False: a model without a VLM (state-only baselines): no tokenizing, vlm None
    # Cross-embodiment mixtures: {name: {"action_dim", "state_dim", "datasets"}}, each robot's own sizes (the
    # platform's are the largest); None: one embodiment at the platform's sizes. See processor/embodiment.py.
    embodiments: dict | None = None
    n_action_steps: int | None = None  # actions of a chunk a client plays before asking again (None: all T)
    # The per-sample steps of a robot sample, in order (names in PROCESSOR_STEPS); None: the default chain for the
    # options above (sample_steps.default_sample_steps). Checkpoints written before it existed hold None.
    sample_steps: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.n_action_steps is not None and not 1 <= self.n_action_steps <= self.action_horizon:
            raise ValueError(
                f"platform.n_action_steps={self.n_action_steps} must lie in [1, action_horizon={self.action_horizon}]"
                " (or be null: the whole chunk)"
            )

    def to_dict(self) -> dict:
        return {"format": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> ProcessorConfig:
        data = {k: v for k, v in data.items() if k != "format"}
        data["camera_keys"] = tuple(data["camera_keys"])
        data["view_size"] = tuple(data["view_size"])
        if isinstance(data.get("image_size"), list):
            data["image_size"] = tuple(data["image_size"])
        if data.get("fast") is not None:
            data["fast"] = FASTOptions(**data["fast"])
        if data.get("state_tokens") is not None:
            data["state_tokens"] = StateTokenOptions(**data["state_tokens"])
        if data.get("sample_steps") is not None:
            data["sample_steps"] = tuple(data["sample_steps"])
        return cls(**data)
