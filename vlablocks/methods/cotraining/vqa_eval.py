"""VQA accuracy of a co-trained checkpoint: greedy answers through the policy's own VLM, exact match.

Each question goes through the checkpoint's processor as an inference sample (the same prompt layout as in
training, answer withheld: chat(views, question) + the framework's prompt suffix), then the VLM decodes greedily
(vlablocks/core/vlm/decoding.py `decode` at temperature 0 over the whole vocabulary) until its end-of-turn token.
A prediction is correct when `normalize_answer(prediction) == normalize_answer(answer)`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from vlablocks.core.vlm.decoding import decode, until_stop
from vlablocks.methods.cotraining.vqa_dataset import VQADataset, normalize_answer

STOP_TOKEN = "<|im_end|>"


@torch.no_grad()
def answer_questions(policy, samples: Sequence[dict], max_new_tokens: int = 8) -> list[str]:
    """samples: VL samples (images, prompt = the question; any `answer` is withheld) -> the decoded answers."""
    processor, framework = policy.processor, policy.model
    questions = [{**s, "answer": s.get("answer") or "?"} for s in samples]  # marks them VL samples; withheld below
    batch = processor(questions, targets=False).to(framework.device)
    vlm = framework.vlm
    was_training = framework.training
    framework.eval()
    stop = vlm.token_id(STOP_TOKEN)
    decoded = decode(
        vlm,
        batch.vlm,
        stop_token_id=stop,
        max_new_tokens=max_new_tokens,
        vision_hook=getattr(framework, "film", None),  # QwenOFT's optional FiLM hook, as in its training pass
    )
    framework.train(was_training)
    return [vlm.tokenizer.decode(row, skip_special_tokens=True) for row in until_stop(decoded["tokens"], stop)]


def vqa_accuracy(policy, dataset: VQADataset, batch_size: int = 32, limit: int | None = None) -> dict:
    """-> {"accuracy", "correct", "total", "per_kind": {kind: accuracy}, "examples": the first 20 questions with their
    predictions, "predictions": every prediction, in dataset order}.

    kind: the record's "kind" (toy VQA: count, colour, exists), "all" when it has none.
    """
    total = len(dataset) if limit is None else min(limit, len(dataset))
    if total < 1:
        raise ValueError("the VQA dataset is empty; nothing to evaluate")
    hits: dict[str, list[bool]] = defaultdict(list)
    examples, predicted_all = [], []
    for start in range(0, total, batch_size):
        indices = range(start, min(start + batch_size, total))
        samples = [dataset[i] for i in indices]
        predictions = answer_questions(policy, samples)
        predicted_all.extend(predictions)
        for index, sample, predicted in zip(indices, samples, predictions):
            correct = normalize_answer(predicted) == normalize_answer(sample["answer"])
            hits[dataset.records[index].get("kind", "all")].append(correct)
            if len(examples) < 20:
                examples.append({"question": sample["prompt"], "answer": sample["answer"], "predicted": predicted})
    correct = sum(sum(h) for h in hits.values())
    return {
        "accuracy": correct / total,
        "correct": correct,
        "total": total,
        "per_kind": {kind: sum(h) / len(h) for kind, h in sorted(hits.items())},
        "examples": examples,
        "predictions": predicted_all,
    }
