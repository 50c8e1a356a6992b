"""QwenFAST: pi0-FAST on a Qwen-VL backbone — the action chunk as FAST tokens in the assistant answer.

    prompt = chat(views..., instruction); answer = <|fast_i|>... <|im_end|>
    training: cross-entropy on the answer tokens only (the prompt is context, not target)
    inference: greedy decoding with the KV cache, constrained to FAST tokens and the stop token,
               then FAST decode (inverse DCT) -> normalized actions [B, T, D]

The FAST tokenizer is fitted on the training set's normalized chunks (`prepare_for_training`) unless
`action_model.path` names a fitted one, and is saved with every checkpoint. Chunk steps padded at
episode ends are part of the DCT (the dataset repeats the boundary frame, i.e. "hold").
Run this file to smoke-test it: `python vlablocks/framework/qwen_fast.py [--config_yaml F] [overrides]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlablocks.action_model.fast_tokenizer import FASTTokenizer
from vlablocks.config import registry_field
from vlablocks.framework.base import Framework
from vlablocks.registry import FRAMEWORKS, VLMS

FAST_DIR = "fast_tokenizer"


@FRAMEWORKS.register("QwenFAST")
class QwenFAST(Framework):
    """Qwen-VL answering with FAST action tokens (pi0-FAST): autoregressive, KV-cached, constrained decoding."""

    @dataclass(frozen=True)
    class Config:
        name: str = "QwenFAST"
        vlm: dict = registry_field("vlms", "qwen2_5_vl")
        action_model: dict = registry_field("action_models", "fast")
        stop_token: str = "<|im_end|>"  # the chat template's end-of-turn token ends the answer
        fit_max_chunks: int = 4000  # training chunks sampled to fit the FAST tokenizer

    def __init__(self, config: Config, *, experiment: dict, norm_stats: dict | None = None) -> None:
        super().__init__(config, experiment=experiment, norm_stats=norm_stats)
        if config.action_model["name"] != "fast":
            raise ValueError(f"QwenFAST needs framework.action_model.name: fast, got {config.action_model['name']!r}")
        self.vlm = VLMS.build(config.vlm)
        self.fast: FASTTokenizer = self.build_action_model(config.action_model, cond_dim=self.vlm.hidden_size)
        # One VLM token per possible FAST id, so the embedding size never depends on the fitted vocabulary.
        self.fast_tokens = [f"<|fast_{i}|>" for i in range(self.fast.config.vocab_size)]
        self.fast_token_ids = self.vlm.add_special_tokens(self.fast_tokens)
        self.stop_token_id = self.vlm.token_id(config.stop_token)
        self._fast_id_of = {vlm_id: i for i, vlm_id in enumerate(self.fast_token_ids)}

    # ---- the FAST tokenizer ----------------------------------------------------------------------
    def prepare_for_training(self, dataset) -> None:
        """Fits the FAST tokenizer on up to `fit_max_chunks` normalized chunks of `dataset` (once)."""
        if self.fast.fitted:
            return
        rng = np.random.default_rng(0)
        count = min(len(dataset), self.config.fit_max_chunks)
        indices = rng.choice(len(dataset), size=count, replace=False)
        samples = [dataset[int(i)] for i in indices]
        chunks, _ = self.batch_actions(samples)
        self.fast.fit(chunks.cpu().numpy().astype(np.float64))

    def save_extra(self, directory: Path) -> None:
        self.fast.save(directory / FAST_DIR)

    def load_extra(self, directory: Path) -> None:
        self.fast = FASTTokenizer.load(directory / FAST_DIR)

    def answer_suffixes(self, normalized: torch.Tensor) -> list[str]:
        """normalized actions [B, T, D] -> per sample the answer text: FAST tokens then the stop token."""
        ids = self.fast.encode_batch(normalized.detach().cpu().numpy().astype(np.float64))
        return ["".join(self.fast_tokens[i] for i in row) + self.config.stop_token for row in ids]

    # ---- the contract -------------------------------------------------------------------------------
    def forward(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Cross-entropy on the answer tokens (FAST tokens + stop), averaged over those tokens."""
        actions, _ = self.batch_actions(examples)
        suffixes = self.answer_suffixes(actions)
        out = self.vlm(examples, suffix=suffixes)
        input_ids = out.input_ids
        positions, targets = [], []
        for b, suffix in enumerate(suffixes):
            answer_len = len(self.vlm.tokenizer(suffix, add_special_tokens=False)["input_ids"])
            real = out.attention_mask[b].nonzero().squeeze(-1)
            answer = real[-answer_len:]  # the suffix closes the sequence (left padding)
            positions.append(torch.stack([torch.full_like(answer, b), answer - 1], dim=-1))  # logits predicting it
            targets.append(input_ids[b, answer])
        index = torch.cat(positions)
        hidden = out.last_hidden_state[index[:, 0], index[:, 1]]
        logits = self.vlm.model.lm_head(hidden)
        loss = F.cross_entropy(logits.float(), torch.cat(targets))
        return {"loss": loss}

    def predict_normalized(self, examples: list[dict], generator: torch.Generator | None) -> torch.Tensor:
        if not self.fast.fitted:
            raise ValueError("QwenFAST: the FAST tokenizer is not fitted; train first or set action_model.path")
        generated = self.vlm.generate_constrained(
            examples,
            allowed_token_ids=self.fast_token_ids[: self.fast.vocab_size],
            stop_token_id=self.stop_token_id,
            max_new_tokens=self.platform.action_horizon * self.platform.action_dim + 1,
        )
        decoded = [self.fast.decode([self._fast_id_of[i] for i in row]) for row in generated]
        self.last_decode_reports = [d.report for d in decoded]  # malformed sequences, repaired
        return torch.as_tensor(np.stack([d.actions for d in decoded]), device=self.device)


if __name__ == "__main__":
    from vlablocks.framework.standalone import run_standalone

    raise SystemExit(run_standalone("QwenFAST"))
