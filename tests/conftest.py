"""Shared test settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: the CI machine has 2 cores, and tiny models gain nothing from more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    grad_enabled = torch.is_grad_enabled()
    yield
    torch.set_num_threads(threads)
    # A command run in-process must not leave autograd switched off for every later test.
    assert torch.is_grad_enabled() == grad_enabled, "this test (or the code it ran) left torch's grad mode changed"


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory):
    """A 4-episode toy LeRobot dataset, written once per test session."""
    from vlablocks.tools.toy.toy_dataset import write_toy_dataset

    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", episodes=4, seed=0)


@pytest.fixture(scope="module")
def qwen25():
    """A tiny random-init Qwen2.5-VL backbone (tests/vlm_helpers.py `build`), shared by a module's tests."""
    from vlm_helpers import build

    return build("qwen2_5_vl")
