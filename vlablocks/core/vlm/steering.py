"""Writing into (and reading from) the language model's residual stream at the instruction's text positions.

The residual stream has num_layers + 1 indices r (HF's hidden_states numbering): h_0 [B, L, H] enters decoder
layer 0 (the token embeddings), h_r is the output of decoder layer r - 1. The instruction's text positions of a
prompt are the tokens of the user turn after its last view, i.e. strictly between the last `<|vision_end|>` and
the next `<|im_end|>` (both Qwen-VL families lay prompts out this way; vlablocks/core/vlm/inputs.py
`user_messages`). With a vector v_r (broadcast over positions, [1, H]) or one vector per text position
(v_r [P, H], written in order), a `Steering` edits every chosen index r there:

    add:    h_r[b, p] <- h_r[b, p] + alpha * v_r[b, p]
    blend:  h_r[b, p] <- (1 - alpha) * h_r[b, p] + alpha * v_r[b, p]

and leaves every other position untouched; later layers (and the action head) read the edited stream.
alpha = 0 leaves the model's outputs bit-identical. `capture_residuals` reads the same h_r (what
`vlablocks text-latent extract` averages), so reading and writing address the very same tensors.

    with steering(vlm, Steering(vectors, layers=(0, 1, 2), mode="blend", alpha=1.0)):  # installed, then removed
        out = vlm(inputs)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

MODES = ("add", "blend")


@dataclass(frozen=True)
class Steering:
    """What to write. vectors: [B, K, P, H] (P = 1: one vector per layer, broadcast over the text positions;
    P > 1: one per text position, whose count must then be P in every row); layers: the K residual-stream
    indices r (0 = embeddings, r = output of decoder layer r - 1) edited, in the order of `vectors`' K axis."""

    vectors: torch.Tensor
    layers: tuple[int, ...]
    mode: str = "add"
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"steering mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.vectors.dim() != 4 or self.vectors.shape[1] != len(self.layers):
            raise ValueError(
                f"steering vectors must be [B, K={len(self.layers)} layers, P, H], got {tuple(self.vectors.shape)}"
            )


def language_layers(vlm) -> torch.nn.ModuleList:
    """The decoder layers of a VLMBackbone's language model (Qwen2.5-VL and Qwen3-VL alike)."""
    return vlm.model.model.language_model.layers


def language_final_norm(vlm) -> torch.nn.Module:
    """The norm after the last decoder layer: its output is the last hidden state the LM head reads."""
    return vlm.model.model.language_model.norm


def text_positions(input_ids: torch.Tensor, vision_end_id: int, turn_end_id: int) -> torch.Tensor:
    """input_ids: [B, L] -> [B, L] bool, True at the instruction's tokens: after the row's last vision_end token
    (its start, if it has no view) and before the first turn_end token that follows it."""
    batch, length = input_ids.shape
    index = torch.arange(length, device=input_ids.device).expand(batch, length)
    is_end = input_ids == vision_end_id
    last_view = torch.where(is_end, index, torch.full_like(index, -1)).max(dim=1).values  # [B]
    after = index > last_view[:, None]
    turn_end = (input_ids == turn_end_id) & after
    first_turn_end = torch.where(turn_end, index, torch.full_like(index, length)).min(dim=1).values
    return after & (index < first_turn_end[:, None])


def instruction_mask(vlm, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the instruction's text positions of the VLM's prompts (see `text_positions`)."""
    return text_positions(input_ids, vlm.token_id("<|vision_end|>"), vlm.token_id("<|im_end|>"))


def scatter_vectors(steering: Steering, mask: torch.Tensor) -> torch.Tensor:
    """Places the vectors at the text positions: -> [K, B, L, H] (zero elsewhere)."""
    vectors = steering.vectors
    batch, layers, positions, hidden = vectors.shape
    if batch != mask.shape[0]:
        raise ValueError(f"steering vectors are for {batch} prompts, the batch has {mask.shape[0]}")
    counts = mask.sum(dim=1)
    if positions > 1 and bool((counts != positions).any()):
        raise ValueError(
            f"per-position steering vectors cover {positions} text tokens, but the prompts have {counts.tolist()}: "
            "use a prompt of that many tokens (the blank prompt of the latent's task) or the per-layer mean vectors"
        )
    full = vectors.new_zeros(layers, batch, mask.shape[1], hidden)
    rows, columns = mask.nonzero(as_tuple=True)
    order = (mask.cumsum(dim=1) - 1)[rows, columns] if positions > 1 else torch.zeros_like(rows)
    full[:, rows, columns] = vectors[rows, :, order].transpose(0, 1)
    return full


@contextmanager
def steering(vlm, steer: Steering | None):
    """Installs the edit (see the module docstring) on `vlm` for every forward pass inside the block and removes it
    on exit: a scoped context, no state left on the model. Each pass of the language model reads its `input_ids`
    [B, L] (a pre-hook on the multimodal model) to find the instruction's text positions; a pass without any
    (a cached decoding step) is left alone. None: no edit.

        with steering(vlm, Steering(vectors, layers=(0, 1), mode="blend", alpha=1.0)):
            actions = policy.predict(samples)
    """
    if steer is None:
        yield
        return
    layers = language_layers(vlm)
    bad = [layer for layer in steer.layers if not 0 <= layer <= len(layers)]
    if bad:
        raise ValueError(
            f"steering layers {bad} are out of range: the residual stream has indices 0..{len(layers)} "
            f"(0 = the embeddings, r = the output of decoder layer r - 1)"
        )
    current: dict = {}  # this pass's instruction mask [B, L] and vectors [K, B, L, H]; empty: leave the pass alone

    def read_prompt(module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        current.clear()
        if input_ids is not None:
            mask = instruction_mask(vlm, input_ids)
            if mask.any():
                current.update(mask=mask, full=scatter_vectors(steer, mask))
        return args, kwargs

    def edited(k: int, hidden: torch.Tensor) -> torch.Tensor:
        mask = current.get("mask")
        if mask is None or hidden.shape[:2] != mask.shape:
            return hidden
        target, where = current["full"][k].to(hidden.dtype), mask[..., None]
        if steer.mode == "add":
            return torch.where(where, hidden + steer.alpha * target, hidden)
        return torch.where(where, (1 - steer.alpha) * hidden + steer.alpha * target, hidden)

    handles = [vlm.model.model.register_forward_pre_hook(read_prompt, with_kwargs=True)]
    handles += [attach(layers, index, lambda hidden, k=k: edited(k, hidden)) for k, index in enumerate(steer.layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def attach(layers: torch.nn.ModuleList, index: int, change, first: bool = True) -> torch.utils.hooks.RemovableHandle:
    """Applies change(h) -> h to residual-stream index `index`: 0 = the input of decoder layer 0 (the
    embeddings), r >= 1 = the output of layer r - 1 (HF's hidden_states indexing). first: the hook runs before any
    other on that layer (steering: transformers records hidden states with hooks, so the recorded states include
    the edit); False: after them (capture: it sees the edit)."""
    if index == 0:

        def pre_hook(module, args, kwargs):
            if args:
                return (change(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": change(kwargs["hidden_states"])}

        return layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=first)

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (change(output[0]), *output[1:])
        return change(output)

    return layers[index - 1].register_forward_hook(hook, prepend=first)


@contextmanager
def capture_residuals(vlm, store: list):
    """Fills `store` with the residual stream [B, L, H] at every index 0..num_layers (see `attach`) for the pass
    inside the block (one pass), after any steering edit."""
    layers = language_layers(vlm)

    def keep(index: int):
        def change(hidden: torch.Tensor) -> torch.Tensor:
            store.append((index, hidden.detach()))
            return hidden

        return change

    handles = [attach(layers, index, keep(index), first=False) for index in range(len(layers) + 1)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        store.sort(key=lambda item: item[0])
        store[:] = [hidden for _, hidden in store]
