"""The action-token mode (`action_model: token_bins`): bins are reserved tokens of the VLM's vocabulary, scored by its
LM head at T x D parallel queries; log-probs are a hand softmax at the temperature; SFT, serving and RL use it."""

from __future__ import annotations

import test_rl
import torch
import torch.nn.functional as F

from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.framework.synthetic import synthetic_examples
from vlablocks.core.policy.policy import Policy
from vlablocks.core.training.train import train
from vlablocks.methods.rl.loop import rl

PLATFORM = test_rl.PLATFORM  # T = 4, D = 2
TOKENS = {
    "name": "QwenOFT",
    "vlm": {"name": "qwen2_5_vl", "image_size": 56},
    "action_model": {"name": "token_bins", "num_bins": 16},
}


def sft(run_dir, steps: int = 2, learning_rate: float = 1e-3):
    platform = PlatformConfig(**PLATFORM)
    data = synthetic_examples(platform, 8, image_size=56, seed=7, dataset_name="toy", camera_keys=["top"])
    trainer = {"max_steps": steps, "batch_size": 2, "learning_rate": learning_rate, "save_every": 1, "keep_last": 50}
    experiment = parse_experiment(
        {"run_dir": str(run_dir), "seed": 3, "platform": PLATFORM, "framework": TOKENS, "trainer": trainer}
    )
    return train(experiment, dataset=data), data


def test_token_log_probs_are_a_hand_softmax_of_the_lm_head_rows_at_the_temperature(tmp_path):
    result, data = sft(tmp_path / "sft", steps=1)
    policy = Policy.from_pretrained(result["checkpoint"]).eval()
    framework, head = policy.model, policy.model.action_model
    vocab = framework.vlm.tokenizer.get_vocab()
    assert head.bin_token_ids.tolist() == [vocab[f"<|abin_{k}|>"] for k in range(16)]  # reserved vocabulary tokens
    assert framework.processor_options()["prompt_suffix"].count("<|act_") == 4 * 2  # one query per action scalar
    assert sum(p.numel() for p in head.parameters()) == 0  # the logits are the VLM's

    batch = policy.processor([{k: v for k, v in data[i].items() if k != "action"} for i in range(3)], targets=False)
    with torch.no_grad():
        queries = framework.condition(batch).tokens  # [3, 8, H]
        lm_rows = framework.vlm.model.get_output_embeddings().weight[head.bin_token_ids]
        by_hand = F.log_softmax((queries @ lm_rows.T) / 1.6, dim=-1).reshape(3, 4, 2, 16)  # [B, T, D, K]
        drawn = framework.sample_with_log_probs(batch, 1.6, torch.Generator().manual_seed(0))
        again = framework.choice_log_probs(batch, drawn["choices"], 1.6)
    chosen = by_hand.reshape(3, 8, 16).gather(-1, drawn["choices"].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(drawn["log_probs"], chosen, atol=1e-5)
    assert torch.allclose(again["log_probs"], chosen, atol=1e-5)
    entropy = -(by_hand.exp() * by_hand).sum(-1).reshape(3, 8)
    assert torch.allclose(again["entropy"], entropy, atol=1e-5)
    greedy = framework.sample_actions(batch.to(framework.device), None)["actions"]  # what `serve` runs
    assert torch.equal(greedy, head.centres[by_hand.argmax(-1)])

    with torch.no_grad():  # the LM head's row of bin 5 is the logit of bin 5: raise it and bin 5 wins everywhere
        framework.vlm.model.get_output_embeddings().weight[head.bin_token_ids[5]] += 50 * queries.mean((0, 1))
        greedy = framework.sample_actions(batch.to(framework.device), None)["actions"]
    assert torch.allclose(greedy, torch.full_like(greedy, float(head.centres[5])))


def test_sft_moves_the_bin_token_rows_and_rl_with_lora_updates_the_adapters(tmp_path):
    result, _ = sft(tmp_path / "sft", steps=3)
    first, last = (Policy.from_pretrained(tmp_path / "sft" / "checkpoints" / f"step_{k}").model for k in (1, 3))
    rows = [m.vlm.model.get_output_embeddings().weight[m.action_model.bin_token_ids] for m in (first, last)]
    assert not torch.equal(rows[0], rows[1])  # the cross-entropy reaches the LM head's bin rows
    assert all(torch.isfinite(torch.tensor(loss)) for loss in result["losses"])

    experiment = test_rl.rl_experiment(tmp_path / "rl", result["checkpoint"], iterations=1, lora={"enabled": True})
    policy = Policy.from_pretrained(rl(experiment)["checkpoint"])
    assert policy.model.vlm.lora_enabled and policy.model.action_model.bin_token_ids.numel() == 16
    lora_b = [v for k, v in policy.model.state_dict().items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # the policy gradient reached the adapters
    frozen = policy.model.vlm.model.get_output_embeddings().weight[policy.model.action_model.bin_token_ids]
    assert torch.equal(frozen, rows[1])  # under LoRA the LM head's bin rows stay as SFT left them
