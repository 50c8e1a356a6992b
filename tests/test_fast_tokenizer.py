"""FAST tokenizer: round-trip precision, compression, dense ids, JSON persistence, robust decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlablocks.core.dataloader.synthetic_chunks import smooth_chunks as smooth_trajectories
from vlablocks.core.processor.fast_tokenizer import FILE_NAME, DecodedChunk, FASTTokenizer

T, D = 8, 7


def smooth_chunks(n: int, seed: int, horizon: int = T, dim: int = D) -> np.ndarray:
    """[n, T, D] smooth normalized trajectories at this suite's chunk shape."""
    return smooth_trajectories(n, horizon, dim, seed)


@pytest.fixture(scope="module")
def tokenizer() -> FASTTokenizer:
    return FASTTokenizer(FASTTokenizer.Config(), action_horizon=T, action_dim=D).fit(smooth_chunks(1000, seed=0))


def test_round_trip_error_on_held_out_chunks_is_within_1_percent_of_the_range(tokenizer):
    held_out = smooth_chunks(200, seed=1)
    decoded = [tokenizer.decode(tokenizer.encode(chunk)) for chunk in held_out]
    assert all(d.ok for d in decoded)
    error = np.abs(np.stack([d.actions for d in decoded]) - held_out)  # [N, T, D]
    action_range = held_out.max(axis=(0, 1)) - held_out.min(axis=(0, 1))  # per dimension
    assert action_range.min() > 1.5  # the chunks do span most of [-1, 1]
    assert (error.mean(axis=(0, 1)) <= 0.01 * action_range).all()
    assert (np.sqrt((error**2).mean(axis=(0, 1))) <= 0.01 * action_range).all()


def test_compresses_smooth_chunks_below_the_naive_token_count(tokenizer):
    lengths = [len(ids) for ids in tokenizer.encode_batch(smooth_chunks(200, seed=1))]
    assert np.mean(lengths) < T * D / 2  # naive binning spends T * D tokens per chunk


def test_ids_are_a_dense_range(tokenizer):
    size = tokenizer.vocab_size
    assert 1 < size <= tokenizer.config.vocab_size
    vocabulary = tokenizer._require_bpe().get_vocab()
    assert sorted(vocabulary.values()) == list(range(size))
    ids = [i for chunk in tokenizer.encode_batch(smooth_chunks(50, seed=2)) for i in chunk]
    assert min(ids) >= 0 and max(ids) < size


def test_out_of_range_actions_are_clipped_to_valid_ids(tokenizer):
    wild = np.full((T, D), 40.0)
    ids = tokenizer.encode(wild)
    assert ids and max(ids) < tokenizer.vocab_size
    decoded = tokenizer.decode(ids)
    assert decoded.ok and np.isfinite(decoded.actions).all()


def test_save_and_load_are_json_and_reproduce_the_encoding(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path)
    assert path.name == FILE_NAME and sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]
    json.loads(path.read_text(encoding="utf-8"))  # plain JSON
    chunks = smooth_chunks(20, seed=3)
    loaded = FASTTokenizer.load(tmp_path)
    assert loaded.encode_batch(chunks) == tokenizer.encode_batch(chunks)
    assert (loaded.config, loaded.action_horizon, loaded.action_dim) == (tokenizer.config, T, D)
    assert loaded.vocab_size == tokenizer.vocab_size
    np.testing.assert_array_equal(
        loaded.decode(tokenizer.encode(chunks[0])).actions, tokenizer.decode(tokenizer.encode(chunks[0])).actions
    )
    # A tokenizer fitted for another chunk shape is refused by the processor (`fast.path`): tests/test_processor.py.
    with pytest.raises(FileNotFoundError, match="no FAST tokenizer at"):
        FASTTokenizer.load(tmp_path / "missing")


def test_decode_repairs_malformed_sequences_and_reports_them(tokenizer):
    chunk = smooth_chunks(1, seed=4)[0]
    ids = tokenizer.encode(chunk)
    exact = tokenizer.decode(ids)
    assert exact.ok and exact.report == ""

    invalid = tokenizer.decode([-3, *ids, tokenizer.vocab_size + 7])
    assert not invalid.ok and invalid.invalid_ids == (-3, tokenizer.vocab_size + 7)
    np.testing.assert_array_equal(invalid.actions, exact.actions)
    assert "skipped 2 invalid ids" in invalid.report

    truncated = tokenizer.decode(ids[: len(ids) // 2])
    assert truncated.num_coefficients < T * D and "coefficients missing" in truncated.report
    assert truncated.actions.shape == (T, D) and np.isfinite(truncated.actions).all()
    # The low frequencies come first, so a cut sequence still gives a rough chunk (better than zeros).
    assert np.abs(truncated.actions - chunk).mean() < np.abs(chunk).mean()

    surplus = tokenizer.decode(ids + ids)
    assert surplus.num_coefficients > T * D and "surplus" in surplus.report
    np.testing.assert_allclose(surplus.actions, exact.actions)

    empty = tokenizer.decode([])
    assert isinstance(empty, DecodedChunk) and not empty.ok
    np.testing.assert_array_equal(empty.actions, np.zeros((T, D), dtype=np.float32))


def test_clear_errors_for_unfitted_use_and_bad_shapes(tokenizer):
    fresh = FASTTokenizer(action_horizon=T, action_dim=D)
    with pytest.raises(RuntimeError, match="not fitted; call fit"):
        fresh.encode(np.zeros((T, D)))
    with pytest.raises(ValueError, match=r"expects \[T, D\] with \(T, D\) = \(8, 7\), got \[7, 8\]"):
        tokenizer.encode(np.zeros((D, T)))
    with pytest.raises(ValueError, match="non-finite"):
        tokenizer.encode(np.full((T, D), np.nan))
    with pytest.raises(ValueError, match="lower scale or raise vocab_size"):
        FASTTokenizer(FASTTokenizer.Config(scale=1000.0, vocab_size=64), action_horizon=T, action_dim=D).fit(
            smooth_chunks(50, seed=0)
        )


def test_without_merges_every_coefficient_is_one_token_of_the_alphabet(tmp_path):
    chunks = smooth_chunks(300, seed=2)
    config = FASTTokenizer.Config(scale=5.0, vocab_size=1024, bpe_merges=False)
    plain = FASTTokenizer(config, action_horizon=T, action_dim=D).fit(chunks)
    quantized = plain.quantize(chunks)
    assert plain.vocab_size == quantized.max() - quantized.min() + 1  # the alphabet, no merged tokens
    ids = plain.encode_batch(chunks[:20])
    assert all(len(row) == T * D for row in ids)
    # frequency-major: the first D ids are the lowest (DC) coefficient of each dimension, offset by the minimum
    np.testing.assert_array_equal([row[:D] for row in ids], quantized[:20, 0, :] - quantized.min())
    plain.save(tmp_path)
    assert FASTTokenizer.load(tmp_path).encode_batch(chunks[:20]) == ids
