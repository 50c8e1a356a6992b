"""The one decoding loop of a VLMBackbone: KV-cached, constrained to an allowed token set or not, greedy at
temperature 0 and sampled (reproducibly, with a seeded generator) above it, with the exact log-probability of every
sampled token on request (QwenFAST's RL policy).

Every step reads the LM head's full-vocabulary logits of the last position (float32), as transformers' `generate`
does, restricts them to the allowed ids (all others have probability 0) and then

    temperature 0:  token = argmax over the allowed ids (ties: the lowest id)
    temperature T:  token ~ softmax(logits / T) over the allowed ids,  log pi(token) = log_softmax(logits / T)[token]

The prompt pass holds the images (left-padded attention mask, the prompt's multimodal rope positions); each new
(text) token's rope position is one past the row's largest. A steering context (vlm/steering.py `steering`) edits
the prompt pass only, as does any `vision_hook` (it changes the image features).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from vlablocks.core.batch import VLMInputs
from vlablocks.core.vlm.base import VisionHook, VLMBackbone
from vlablocks.core.vlm.runtime import allowed_ids, check_temperature, tempered_log_probs


@torch.no_grad()
def decode(
    vlm: VLMBackbone,
    inputs: VLMInputs,
    stop_token_id: int,
    max_new_tokens: int,
    allowed_token_ids: Sequence[int] | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    vision_hook: VisionHook | None = None,
    return_log_probs: bool = False,
    head_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Decodes after the prompts of `inputs` (input_ids: [B, L], left-padded) until each row has emitted
    `stop_token_id` or `max_new_tokens` tokens.

    allowed_token_ids: the ids decoding may emit besides the stop token; None: the whole vocabulary.
    temperature: 0 decodes greedily (argmax), > 0 samples with torch.multinomial and `generator`.
    return_log_probs: also return the log-probabilities (needs temperature > 0).
    head_input: a map of the language model's final hidden states [B, 1, H] before the LM head (QwenFAST's state
    and answer MLP); None: the LM head reads them as they are.

    -> {"tokens": [B, N] long, the emitted ids (stop included) right-padded with the stop token,
        "mask": [B, N] bool, True up to and including the first stop,
        "log_probs": [B, N] float32 (only with return_log_probs), log pi of each token (0 at padding)},
        N = max_new_tokens.
    """
    if return_log_probs:
        check_temperature(temperature)
    elif not temperature >= 0:  # also refuses nan
        raise ValueError(f"decoding temperature must be >= 0 (0 = greedy), got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    vocab_size = vlm.model.get_output_embeddings().weight.shape[0]
    if allowed_token_ids is None:
        if not 0 <= stop_token_id < vocab_size:
            raise ValueError(f"stop_token_id must lie in [0, {vocab_size}), got {stop_token_id}")
        allowed = None
    else:
        allowed = torch.tensor(allowed_ids(allowed_token_ids, stop_token_id, vocab_size), device=vlm.device)
    layout = vlm.layout(inputs)
    features, _ = vlm.encode_images(inputs, vision_hook, layout)
    positions = layout.rope_positions  # [3, B, L]
    next_position = positions.amax(dim=(0, 2)) + 1  # [B]
    cache_kwarg = "cache" if "cache" in inspect.signature(vlm.model.model.forward).parameters else "past_key_values"
    cache = {cache_kwarg: DynamicCache(config=vlm.model.config.get_text_config())}
    step = vlm.prompt_inputs({**vlm.model_kwargs(inputs), "position_ids": positions}, features, layout)
    size, attention_mask = inputs.input_ids.shape[0], inputs.attention_mask
    tokens = torch.full((size, max_new_tokens), int(stop_token_id), dtype=torch.long, device=vlm.device)
    log_probs = torch.zeros(size, max_new_tokens, device=vlm.device)
    mask = torch.zeros(size, max_new_tokens, dtype=torch.bool, device=vlm.device)
    done = torch.zeros(size, dtype=torch.bool, device=vlm.device)
    for t in range(max_new_tokens):
        hidden = vlm.model.model(**step, **cache, use_cache=True, return_dict=True).last_hidden_state[:, -1:]
        hidden = hidden if head_input is None else head_input(hidden)
        logits = vlm.model.get_output_embeddings()(hidden)[:, -1].float()  # [B, V]
        if allowed is not None:
            logits = logits[:, allowed]  # [B, K]
        column, step_log_probs = choose(logits, temperature, generator)  # [B], [B]
        token = column if allowed is None else allowed[column]
        tokens[:, t] = torch.where(done, tokens[:, t], token)
        if return_log_probs:
            log_probs[:, t] = torch.where(done, 0.0, step_log_probs)
        mask[:, t] = ~done
        done = done | (tokens[:, t] == stop_token_id)
        # Eager decoding stops once every row has; a compiled loop runs all steps (no host read of `done`), which
        # changes nothing: a finished row's tokens are padding and its mask false.
        if not torch.compiler.is_compiling() and bool(done.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(size, 1)], dim=1)
        position = (next_position + t).view(1, size, 1).expand(3, size, 1)
        step = {"input_ids": tokens[:, t : t + 1], "attention_mask": attention_mask, "position_ids": position}
    result = {"tokens": tokens, "mask": mask}
    if return_log_probs:
        result["log_probs"] = log_probs
    return result


def choose(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [B, K] float32 -> (the chosen column [B] long, its log-probability [B] at `temperature`).

    Temperature 0: the argmax (the first of tied maxima), log-probability 0; > 0: a draw from softmax(logits / T).
    """
    if temperature == 0:
        column = logits.argmax(dim=-1)
        return column, torch.zeros_like(logits[:, 0])
    step_log_probs = tempered_log_probs(logits, temperature)  # [B, K]
    column = torch.multinomial(step_log_probs.exp(), 1, generator=generator)  # [B, 1]
    return column[:, 0], step_log_probs.gather(1, column)[:, 0]


@torch.compiler.disable
def until_stop(tokens: torch.Tensor, stop_token_id: int) -> list[list[int]]:
    """tokens: [B, N] -> per row, the ids before its first `stop_token_id` (all N if it has none). Host-side lists:
    a compiled graph ends before it (one graph break, after the last tensor op)."""
    rows = tokens.tolist()
    return [row[: row.index(stop_token_id)] if stop_token_id in row else row for row in rows]


def allowed_logits(vlm: VLMBackbone, hidden: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """hidden: [..., H] final hidden states, allowed: [K] ids -> float32 LM-head logits of those ids [..., K]
    (teacher-forced recomputation over many positions: only the K rows, no [..., vocab] logits)."""
    head = vlm.model.get_output_embeddings()
    if type(head) is nn.Linear:
        bias = head.bias[allowed] if head.bias is not None else None
        return F.linear(hidden, head.weight[allowed], bias).float()
    return head(hidden)[..., allowed].float()
