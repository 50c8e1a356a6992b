"""Temperature sampling with exact log-probabilities for constrained decoding (QwenFAST in RL): the stochastic twin
of `VLMBackbone.generate_constrained`, KV-cached, reproducible with a seeded generator."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from vlablocks.core.batch import VLMInputs
from vlablocks.core.vlm.base import VisionHook, VLMBackbone
from vlablocks.core.vlm.runtime import allowed_ids, check_temperature, tempered_log_probs
from vlablocks.core.vlm.steering import steer


@torch.no_grad()
def sample_constrained(
    vlm: VLMBackbone,
    inputs: VLMInputs,
    allowed_token_ids: list[int],
    stop_token_id: int,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator | None = None,
    vision_hook: VisionHook | None = None,
) -> dict[str, torch.Tensor]:
    """Temperature sampling (KV cache), the stochastic twin of `generate_constrained`: every step draws (with
    torch.multinomial and `generator`) from softmax(logits / temperature) over `allowed_token_ids` + `stop_token_id`
    only, all other ids having probability 0.

    -> {"tokens": [B, N] long, the drawn ids (stop included) right-padded with the stop token,
        "log_probs": [B, N] float32, log pi of each drawn id under that distribution (0 at padding),
        "mask": [B, N] bool, True up to and including the first stop}, N = max_new_tokens.
    """
    check_temperature(temperature)
    vocab_size = vlm.model.get_output_embeddings().weight.shape[0]
    allowed = torch.tensor(allowed_ids(allowed_token_ids, stop_token_id, vocab_size), device=vlm.device)
    features, _ = vlm.encode_images(inputs, vision_hook)
    kwargs = vlm.model_kwargs(inputs)
    base = vlm.model.model
    # Explicit rope positions: the prompt's multimodal ones, then each new (text) token one past the largest.
    positions, _ = base.get_rope_index(
        kwargs["input_ids"],
        mm_token_type_ids=kwargs["mm_token_type_ids"],
        image_grid_thw=inputs.image_grid_thw,
        attention_mask=inputs.attention_mask,
    )
    next_position = positions.amax(dim=(0, 2)) + 1  # [B]
    cache_kwarg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    cache = {cache_kwarg: DynamicCache(config=vlm.model.config.get_text_config())}
    step = {**kwargs, "position_ids": positions, "mm_encoder_outputs": {"image": features}}
    size, attention_mask = inputs.input_ids.shape[0], inputs.attention_mask
    tokens = torch.full((size, max_new_tokens), int(stop_token_id), dtype=torch.long, device=vlm.device)
    log_probs = torch.zeros(size, max_new_tokens, device=vlm.device)
    mask = torch.zeros(size, max_new_tokens, dtype=torch.bool, device=vlm.device)
    done = torch.zeros(size, dtype=torch.bool, device=vlm.device)
    with steer(vlm, vlm.steering, inputs.input_ids):  # edits the prompt pass only (vlm/steering.py)
        for t in range(max_new_tokens):
            hidden = base(**step, **cache, use_cache=True, return_dict=True).last_hidden_state[:, -1]  # [B, H]
            step_log_probs = tempered_log_probs(allowed_logits(vlm, hidden, allowed), temperature)  # [B, K]
            index = torch.multinomial(step_log_probs.exp(), 1, generator=generator)  # [B, 1]
            tokens[:, t] = torch.where(done, tokens[:, t], allowed[index[:, 0]])
            log_probs[:, t] = torch.where(done, 0.0, step_log_probs.gather(1, index)[:, 0])
            mask[:, t] = ~done
            done = done | (tokens[:, t] == stop_token_id)
            if done.all():
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(size, 1)], dim=1)
            position = (next_position + t).view(1, size, 1).expand(3, size, 1)
            step = {"input_ids": tokens[:, t : t + 1], "attention_mask": attention_mask, "position_ids": position}
    return {"tokens": tokens, "log_probs": log_probs, "mask": mask}


def allowed_logits(vlm: VLMBackbone, hidden: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """hidden: [..., H] final hidden states, allowed: [K] ids -> float32 LM-head logits of those ids [..., K]."""
    head = vlm.model.get_output_embeddings()
    if type(head) is nn.Linear:  # only the K rows: no [..., vocab] logits
        bias = head.bias[allowed] if head.bias is not None else None
        return F.linear(hidden, head.weight[allowed], bias).float()
    return head(hidden)[..., allowed].float()
