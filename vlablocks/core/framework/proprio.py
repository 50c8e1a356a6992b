"""OpenVLA-OFT's proprio input: the robot state as one LLM input token.

The normalized state s [S] is projected into the LLM's input embedding space and takes the place of the embedding
of one special token, which the processor writes right before the action queries:

    prompt    = chat(views..., instruction) + <|proprio|> + <act_0> ... <act_{Q-1}>
    e(<|proprio|>) := W_s s + c           [H]      (instead of the token's own embedding row)

so the state reaches the queries through the LLM's layers, with the instruction and the image (QwenOFT
`proprio: llm_token`). The default (`proprio: query_outputs`) adds W_s s to every query's output state instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

PROPRIO_TOKEN = "<|proprio|>"


class ProprioToken(nn.Module):
    """The state's projection into the input token `<|proprio|>` (module docstring)."""

    def __init__(self, vlm, state_dim: int) -> None:
        super().__init__()
        if state_dim <= 0:
            raise ValueError("proprio: llm_token needs a state: the platform has state_dim 0; set use_proprio: false")
        self.token_id = vlm.add_special_tokens([PROPRIO_TOKEN])[0]
        self.proj = nn.Linear(state_dim, vlm.hidden_size)

    @contextmanager
    def applied(self, vlm, state: torch.Tensor | None) -> Iterator[None]:
        """Within the block, the VLM's input embedding of `<|proprio|>` is W_s s + c. state: [B, S] normalized."""
        if state is None:
            raise ValueError("QwenOFT proprio: llm_token needs a `state` in every sample; set use_proprio: false")
        embedding = vlm.model.get_input_embeddings()

        def replace(module, args, output: torch.Tensor) -> torch.Tensor:
            hits = args[0] == self.token_id  # [B, L]; no hit (another embedding call): the output as it is
            # The count is checked eagerly only: a compiled graph does not read a tensor's value on the host.
            if not torch.compiler.is_compiling() and bool(hits.any()) and not bool((hits.sum(1) == 1).all()):
                raise ValueError(f"every prompt must hold {PROPRIO_TOKEN} exactly once (the processor's suffix)")
            projected = self.proj(state.to(self.proj.weight.dtype)).to(output.dtype)  # [B, H]
            return torch.where(hits.unsqueeze(-1), projected.unsqueeze(1), output)

        handle = embedding.register_forward_hook(replace)
        try:
            yield
        finally:
            handle.remove()
