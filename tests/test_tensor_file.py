"""core/tensor_file.py: a safetensors file read one tensor at a time equals safetensors' own reading, bad files are
one-line errors, and checkpoints load through it exactly (issue 38: no whole model on a resumed ZeRO-3 rank; the
2-rank measurement is in tests/zero3_worker.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlablocks.core.policy.checkpoint import load_weights
from vlablocks.core.tensor_file import TensorFile, load_tensors


def test_every_tensor_reads_as_safetensors_reads_it(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "bf16": torch.randn(3, 5, generator=generator).to(torch.bfloat16),
        "f16": torch.randn(7, generator=generator).half(),
        "f32": torch.randn(2, 3, 4, generator=generator),
        "f64": torch.randn(2, generator=generator).double(),
        "i64": torch.arange(-3, 9),
        "u8": torch.arange(200, 256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    reference = load_file(str(path))
    with TensorFile(path) as file:
        assert sorted(file.keys()) == sorted(tensors)
        for key in reversed(file.keys()):  # any order: each read seeks to its own bytes
            got = file.read(key)
            assert got.dtype == reference[key].dtype and got.shape == reference[key].shape == file.shape(key), key
            assert torch.equal(got, reference[key]), key


def test_a_truncated_or_foreign_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"w": torch.ones(1000)}, str(path))
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with TensorFile(truncated) as file, pytest.raises(ValueError, match="truncated; re-save"):
        file.read("w")
    foreign = tmp_path / "model.bin"
    foreign.write_bytes(b"\x80\x04PK" + b"\x00" * 64)  # a pickle-looking file
    with pytest.raises(ValueError, match="is not a safetensors file"):
        TensorFile(foreign)


class Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.linear = nn.Linear(width, 3)
        self.norm = nn.BatchNorm1d(3)  # buffers too
        self.head = nn.Linear(3, width)
        self.tail = nn.Linear(3, width)
        self.tail.weight = self.head.weight  # tied: saved once


def test_load_weights_reads_every_tensor_and_names_a_shape_mismatch(tmp_path):
    torch.manual_seed(0)
    source = Net()
    source.norm.running_mean.fill_(0.25)
    state = {k: v for k, v in source.state_dict().items() if k != "tail.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))
    target = Net()
    load_weights(target, tmp_path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    with pytest.raises(ValueError, match=r"linear.weight: checkpoint \(3, 4\) vs model \(3, 6\)"):
        load_weights(Net(width=6), tmp_path)


def test_load_tensors_writes_only_the_keys_given(tmp_path):
    source, target = Net(), Net()
    save_file({"linear.bias": source.linear.bias.detach()}, str(tmp_path / "b.safetensors"))
    before = target.linear.weight.detach().clone()
    with TensorFile(tmp_path / "b.safetensors") as file:
        load_tensors(target, file, ["linear.bias"])
    assert torch.equal(target.linear.bias, source.linear.bias) and torch.equal(target.linear.weight, before)
