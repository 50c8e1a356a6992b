"""FAST action tokenizer (pi0-FAST): DCT over the chunk -> scale and round -> BPE over the integers.

encode(chunk [T, D]):
    coefficients = scipy.fft.dct(chunk, axis=0, norm="ortho")        per action dimension, over time
    q = round(coefficients * scale), clipped to the range seen by `fit`
    the [T, D] integers are flattened frequency-major (all dimensions' lowest frequency first), each
    mapped to one character, and the string is BPE-encoded; smooth chunks end in long runs of zeros,
    which BPE merges into a few tokens.
decode(ids) inverts this and is robust to malformed sequences (see `DecodedChunk`).

Token ids are a dense range 0 .. vocab_size - 1 (the framework maps them onto added special tokens of
the VLM tokenizer). The BPE is trained with the `tokenizers` library on training chunks (`fit`); the
fitted tokenizer is saved as one JSON file (`save` / `load`), nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import fft
from tokenizers import Tokenizer, models, trainers

FILE_NAME = "fast_tokenizer.json"
FORMAT = "vlablocks-fast/1"
# Quantized values map to characters from U+0100 on: clear of ASCII control and whitespace characters,
# and below the surrogate block that Rust strings (hence `tokenizers`) cannot hold.
CHAR_OFFSET = 0x100
MAX_ALPHABET = 0xD800 - CHAR_OFFSET


@dataclass(frozen=True)
class DecodedChunk:
    """What `FASTTokenizer.decode` recovered from a token sequence.

    actions: [T, D] float32. Ids outside 0..vocab_size-1 are skipped; missing trailing coefficients
    (the highest frequencies, flattened last) are taken as 0; surplus coefficients are dropped.
    """

    actions: np.ndarray
    invalid_ids: tuple[int, ...]
    num_coefficients: int  # decoded from the valid ids
    expected_coefficients: int  # T * D

    @property
    def ok(self) -> bool:
        return not self.invalid_ids and self.num_coefficients == self.expected_coefficients

    @property
    def report(self) -> str:
        """One line describing what was repaired ('' when the sequence was well formed)."""
        problems = []
        if self.invalid_ids:
            problems.append(f"skipped {len(self.invalid_ids)} invalid ids {list(self.invalid_ids[:5])}")
        if self.num_coefficients < self.expected_coefficients:
            problems.append(
                f"{self.expected_coefficients - self.num_coefficients} of {self.expected_coefficients} "
                "coefficients missing (set to 0)"
            )
        if self.num_coefficients > self.expected_coefficients:
            problems.append(f"dropped {self.num_coefficients - self.expected_coefficients} surplus coefficients")
        return "; ".join(problems)


class FASTTokenizer:
    """FAST action tokenizer (pi0-FAST): per-dimension DCT, scale and round, BPE trained on chunks."""

    @dataclass(frozen=True)
    class Config:
        scale: float = 20.0  # DCT coefficients are multiplied by this before rounding (pi0-FAST: 10; see docs)
        vocab_size: int = 1024  # BPE vocabulary upper bound (alphabet + merges)
        bpe_merges: bool = True  # false: one token per quantized coefficient (the alphabet only, T x D tokens)

    def __init__(self, config: Config | None = None, *, action_horizon: int, action_dim: int) -> None:
        self.config = config or self.Config()
        if self.config.scale <= 0 or self.config.vocab_size < 2:
            raise ValueError(
                f"fast: need scale > 0 and vocab_size >= 2, got {self.config.scale}, {self.config.vocab_size}"
            )
        self.action_horizon = action_horizon
        self.action_dim = action_dim
        self._bpe: Tokenizer | None = None
        self._min_value = 0
        self._max_value = 0

    # ------------------------------------------------------------------------------------------
    # Fitting and persistence.

    @property
    def fitted(self) -> bool:
        return self._bpe is not None

    @property
    def vocab_size(self) -> int:
        """V: ids are 0 .. V - 1."""
        return self._require_bpe().get_vocab_size()

    def quantize(self, chunks: np.ndarray) -> np.ndarray:
        """chunks: [N, T, D] -> rounded scaled DCT coefficients [N, T, D] int64 (unclipped)."""
        chunks = self._check_chunks(chunks, batched=True)
        return np.rint(fft.dct(chunks, axis=1, norm="ortho") * self.config.scale).astype(np.int64)

    def fit(self, chunks: np.ndarray) -> FASTTokenizer:
        """Trains the BPE on training chunks [N, T, D] (normalized actions). Returns self."""
        quantized = self.quantize(chunks)
        self._min_value, self._max_value = int(quantized.min()), int(quantized.max())
        alphabet_size = self._max_value - self._min_value + 1
        if alphabet_size > min(MAX_ALPHABET, self.config.vocab_size):
            raise ValueError(
                f"fast: the quantized DCT range holds {alphabet_size} values but vocab_size={self.config.vocab_size} "
                f"(and at most {MAX_ALPHABET}); lower scale or raise vocab_size"
            )
        alphabet = [chr(CHAR_OFFSET + i) for i in range(alphabet_size)]
        bpe = Tokenizer(models.BPE())
        vocab_size = self.config.vocab_size if self.config.bpe_merges else alphabet_size
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=alphabet, special_tokens=[], show_progress=False
        )
        bpe.train_from_iterator((self._to_string(q) for q in quantized), trainer=trainer, length=len(quantized))
        self._bpe = bpe
        return self

    def save(self, directory: str | Path) -> Path:
        """Writes `fast_tokenizer.json` (settings + BPE) into `directory`; returns the file path."""
        bpe = self._require_bpe()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "format": FORMAT,
            "scale": self.config.scale,
            "vocab_size": self.config.vocab_size,
            "bpe_merges": self.config.bpe_merges,
            "action_horizon": self.action_horizon,
            "action_dim": self.action_dim,
            "min_value": self._min_value,
            "max_value": self._max_value,
            "bpe": json.loads(bpe.to_str()),
        }
        path = directory / FILE_NAME
        path.write_text(json.dumps(state), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> FASTTokenizer:
        """Reads a tokenizer written by `save` (JSON only), with the chunk shape and scale it was fitted for.

        Whether that shape fits a policy is the processor's check (`fast.path`, vlablocks/core/processor/pipeline.py).
        """
        path = Path(directory) / FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no FAST tokenizer at {path}; fit one and call save({str(directory)!r}) first")
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("format") != FORMAT:
            raise ValueError(f"{path}: expected format {FORMAT!r}, got {state.get('format')!r}")
        config = cls.Config(float(state["scale"]), int(state["vocab_size"]), bool(state.get("bpe_merges", True)))
        tokenizer = cls(config, action_horizon=int(state["action_horizon"]), action_dim=int(state["action_dim"]))
        tokenizer._min_value, tokenizer._max_value = int(state["min_value"]), int(state["max_value"])
        tokenizer._bpe = Tokenizer.from_str(json.dumps(state["bpe"]))
        return tokenizer

    # ------------------------------------------------------------------------------------------
    # Encoding and decoding.

    def encode(self, chunk: np.ndarray) -> list[int]:
        """chunk: [T, D] normalized actions -> ids in 0 .. vocab_size - 1.

        Coefficients outside the range seen by `fit` are clipped to it (a lossy but valid encoding).
        """
        quantized = self.quantize(self._check_chunks(chunk, batched=False)[None])[0]
        clipped = np.clip(quantized, self._min_value, self._max_value)
        return self._require_bpe().encode(self._to_string(clipped)).ids

    def encode_batch(self, chunks: np.ndarray) -> list[list[int]]:
        """chunks: [N, T, D] -> N id lists."""
        return [self.encode(chunk) for chunk in self._check_chunks(chunks, batched=True)]

    def decode(self, ids: Iterable[int]) -> DecodedChunk:
        """ids -> DecodedChunk with actions [T, D]; never raises on a malformed sequence."""
        bpe = self._require_bpe()
        size = bpe.get_vocab_size()
        pieces, invalid = [], []
        for raw in ids:
            token_id = int(raw)
            token = bpe.id_to_token(token_id) if 0 <= token_id < size else None
            if token is None:
                invalid.append(token_id)
            else:
                pieces.append(token)
        values = np.array([ord(c) - CHAR_OFFSET + self._min_value for c in "".join(pieces)], dtype=np.float64)
        expected = self.action_horizon * self.action_dim
        coefficients = np.zeros(expected, dtype=np.float64)
        coefficients[: min(len(values), expected)] = values[:expected]
        coefficients = coefficients.reshape(self.action_horizon, self.action_dim) / self.config.scale
        actions = fft.idct(coefficients, axis=0, norm="ortho").astype(np.float32)
        return DecodedChunk(actions, tuple(invalid), len(values), expected)

    # ------------------------------------------------------------------------------------------

    def _require_bpe(self) -> Tokenizer:
        if self._bpe is None:
            raise RuntimeError("FAST tokenizer is not fitted; call fit(chunks) or FASTTokenizer.load(directory)")
        return self._bpe

    def _to_string(self, quantized: np.ndarray) -> str:
        """[T, D] ints -> one character per value, frequency-major."""
        return "".join(chr(CHAR_OFFSET + int(v) - self._min_value) for v in quantized.reshape(-1))

    def _check_chunks(self, chunks: np.ndarray, batched: bool) -> np.ndarray:
        chunks = np.asarray(chunks, dtype=np.float64)
        expected = (self.action_horizon, self.action_dim)
        if chunks.shape[-2:] != expected or chunks.ndim != (3 if batched else 2):
            want = "[N, T, D]" if batched else "[T, D]"
            raise ValueError(f"FAST tokenizer expects {want} with (T, D) = {expected}, got {list(chunks.shape)}")
        if not np.isfinite(chunks).all():
            raise ValueError("FAST tokenizer got non-finite actions (nan or inf); check the normalization")
        return chunks
