"""A small Qwen-style tokenizer for tiny random-init VLMs, built offline and deterministically.

Real checkpoints ship their tokenizer; the tiny build (tests, demo) cannot download one. We train a
byte-level BPE with `tokenizers` on a built-in corpus of robot instructions, using exactly the
normalizer and pre-tokenizer of transformers' `Qwen2Tokenizer`, and give it the Qwen chat and vision
special tokens in their published order. The result is cached under `<cache>/tokenizers/<hash>`,
keyed by the corpus and trainer settings, so every build on a machine returns the same vocabulary.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from transformers import Qwen2Tokenizer

from vlablocks.core.atomic import as_umask_allows

# Qwen2/2.5/3-VL special tokens, in the order of their published ids (151643...).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The Qwen-VL chat layout (user turn: one image placeholder per view, then the text), without the
# default system prompt of the published template: tiny models gain nothing from it but tokens.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VOCAB_SIZE = 1024

_VERBS = "pick place put push pull open close move lift stack slide turn rotate grasp press insert".split()
_COLOURS = "red green blue yellow black white orange purple".split()
_OBJECTS = "block cube bowl plate cup mug bottle drawer door lid sponge towel can spoon marker".split()
_PLACES = "left right top bottom front back middle corner table shelf box basket sink tray".split()
_EXTRA = (
    "The robot arm sees the scene from two cameras. What action should the robot take to complete the task? "
    "user assistant system quadrant point at the object holding colour number step action state image view. "
    "0 1 2 3 4 5 6 7 8 9 10 100 0.5 -1 , . ? ! : ; ( ) [ ] { } ' \" / - + = _ * # @ % & < > |"
)


# Optional corpora (`vlm.tiny_tokenizer_corpora`): question-answer text, so that the words of visual questions and
# their one-word answers are single tokens, as in a real Qwen vocabulary (the robot corpus alone spells "none" as
# n/on/e and "row" as r/o/w).
_VQA_LINES = [
    "what colour is the block in the top-left cell? what colour is the block in the bottom-right cell?",
    "what colour is the block in the top-right cell? what colour is the block in the bottom-left cell?",
    "what colour is the block in row 1, column 2? what colour is the block in row 3, column 4?",
    "how many blocks are there? is there a green block? is there a yellow block?",
    *"none red green blue yellow yes no".split(),
]
EXTRA_CORPORA = {"vqa": _VQA_LINES}


def corpus(extra: Sequence[str] = ()) -> list[str]:
    """The built-in training text: templated manipulation instructions, a little general text, then the named
    `extra` corpora (keys of EXTRA_CORPORA), each repeated 8 times."""
    unknown = [name for name in extra if name not in EXTRA_CORPORA]
    if unknown:
        raise ValueError(f"unknown tiny tokenizer corpora {unknown}; choose from {sorted(EXTRA_CORPORA)}")
    lines = [
        f"{verb} the {colour} {obj} to the {place}."
        for verb, colour, obj, place in itertools.product(_VERBS, _COLOURS, _OBJECTS, _PLACES)
    ]
    lines += [_EXTRA] * 8
    for name in extra:
        lines += EXTRA_CORPORA[name] * 8
    return lines


def _trainer_settings() -> dict:
    return {"vocab_size": VOCAB_SIZE, "special_tokens": list(QWEN_SPECIAL_TOKENS), "min_frequency": 2, "version": 1}


def cache_root() -> Path:
    """`$VLABLOCKS_CACHE`, else `$XDG_CACHE_HOME/vlablocks`, else `~/.cache/vlablocks`."""
    if os.environ.get("VLABLOCKS_CACHE"):
        return Path(os.environ["VLABLOCKS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vlablocks"


def tokenizer_key(extra: Sequence[str] = ()) -> str:
    payload = json.dumps({"corpus": corpus(extra), "settings": _trainer_settings()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def train_vocab(extra: Sequence[str] = ()) -> tuple[dict[str, int], list[list[str]]]:
    """Trains the byte-level BPE with Qwen2's pre-tokenization -> (vocab, merges)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    settings = _trainer_settings()
    tokenizer = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=settings["vocab_size"],
        min_frequency=settings["min_frequency"],
        special_tokens=settings["special_tokens"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(extra), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [m.split(" ") if isinstance(m, str) else list(m) for m in model["merges"]]
    return model["vocab"], merges


def tiny_tokenizer(cache_dir: str | Path | None = None, extra: Sequence[str] = ()) -> Qwen2Tokenizer:
    """The tiny Qwen tokenizer (left padding) trained on `corpus(extra)`, once per machine, then read from the cache."""
    directory = (
        Path(cache_dir) if cache_dir is not None else cache_root() / "tokenizers" / f"qwen-tiny-{tokenizer_key(extra)}"
    )
    vocab_file = directory / "vocab.json"
    if vocab_file.is_file():
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        merges = json.loads((directory / "merges.json").read_text(encoding="utf-8"))
    else:
        vocab, merges = train_vocab(extra)
        _write_atomically(directory, {"vocab.json": vocab, "merges.json": merges})
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[tuple(m) for m in merges], padding_side="left")
    tokenizer.add_tokens(list(QWEN_SPECIAL_TOKENS), special_tokens=True)
    return tokenizer


def _write_atomically(directory: Path, files: dict[str, object]) -> None:
    # Several processes may build the tokenizer at once: write a private copy, then rename it into place.
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    as_umask_allows(staging, directory=True)  # mkdtemp's 0700 would keep a shared cache from other accounts
    for name, content in files.items():
        (staging / name).write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    try:
        staging.rename(directory)
    except OSError:  # another process won the race; its files are identical
        for path in staging.iterdir():
            path.unlink()
        staging.rmdir()
