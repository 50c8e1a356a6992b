"""Answers written as VLM tokens (FAST action tokens, VQA answers): the tokens added to the vocabulary and the
teacher-forced answer logits. Shared by QwenFAST, QwenPI05 and co-training."""

from __future__ import annotations

import dataclasses

import torch

from vlablocks.core.processor.config import FASTOptions
from vlablocks.core.processor.steps import IGNORE_INDEX, fast_token

MASK_TOKEN = "<|fast_mask|>"  # the input that stands in for a masked answer token


def masked_answer_inputs(inputs, labels: torch.Tensor, mask_token_id: int):
    """inputs: the VLM inputs (input_ids [B, L]); labels: [B, L], -100 off the answer -> the inputs with every answer
    token replaced by `mask_token_id`, so that no answer position reads another answer token (OpenVLA-OFT's
    parallel decoding; QwenFAST.parallel_decoding, QwenPI05.fast_parallel)."""
    answer = labels != IGNORE_INDEX
    return dataclasses.replace(inputs, input_ids=torch.where(answer, mask_token_id, inputs.input_ids))


def add_fast_tokens(vlm, fast: FASTOptions) -> list[int]:
    """One VLM special token per possible FAST id (so the embedding size never depends on the fitted
    vocabulary) -> their VLM ids, FAST id i at index i."""
    return vlm.add_special_tokens([fast_token(fast.token_prefix, i) for i in range(fast.vocab_size)])


def answer_logits(vlm, out, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher-forced answer: (logits [N, vocab] float32, targets [N] VLM ids) at the N positions whose
    `labels` [B, L] are not -100, each predicted from the hidden state one position before it."""
    rows, cols = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
    hidden = out.last_hidden_state[rows, cols - 1]
    return vlm.model.lm_head(hidden).float(), labels[rows, cols]
