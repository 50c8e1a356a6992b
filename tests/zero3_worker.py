"""Frameworks built under DeepSpeed ZeRO-3 on CPU ranks, launched by tests/test_zero3_init.py; writes
`<out>/rank<r>.json` from every rank.

--rss: a wide tiny-config QwenOFT (hundreds of MB in fp32) built the way `vlablocks train` builds it under ZeRO-3
(`build_context`: partitioned while built), then planted: plainly on the host. Each build's peak resident-set
growth (VmHWM after the build minus VmRSS before it, the peak reset in between) and the model's whole fp32 size.
Then the resume: the plain build's weights saved as a checkpoint and loaded into a partitioned build with
`load_weights` (one tensor at a time, core/tensor_file.py), its peak growth measured and the result compared exactly;
planted: the former loader (the whole file read, then the whole model gathered), measured the same way.

--check CONFIG ...: each config's framework built partitioned, compared after gathering with plain host builds:
every tensor that a plain build makes the same whatever the seed (zero-initialised layers, gate fills, constant
norms) must be exactly that; every other one (numel >= 4096) must have the plain build's spread within 15%, and a
matrix's last 8 rows (the added tokens' rows of the embeddings and LM head) within 25% (a lost rescale or a lost
initialisation moves it 2.5-50x). Then the plain weights are loaded into it with
`load_pretrained_modules` and must all match exactly, as must the VLM when the plain one is saved and built
partitioned from it (`vlm.base_vlm`, transformers' from_pretrained). Planted: the same build with gathering disabled
(vlablocks' `whole` a no-op: its edits made on the partitioned, empty tensors) must fail the first check.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers.integrations import unset_hf_deepspeed_config

from vlablocks.core import partitioned
from vlablocks.core.config import load_config
from vlablocks.core.config.trainer import TrainerConfig
from vlablocks.core.framework.base import build_framework
from vlablocks.core.partitioned import full_numel, is_partitioned, whole
from vlablocks.core.policy.checkpoint import load_weights
from vlablocks.core.training.components import load_pretrained_modules, make_accelerator, seed_everything
from vlablocks.core.training.distributed import end_distributed
from vlablocks.core.training.zero_init import build_context

WIDE = [
    "--framework.vlm.tiny_hidden_size=1024",
    "--framework.vlm.tiny_num_layers=8",
    "--framework.vlm.tiny_num_heads=16",
]


def status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measured(build):
    """-> (build(), peak resident-set growth in bytes while it ran)."""
    gc.collect()
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)  # what earlier builds freed goes back (glibc)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now (Linux)
    before = status_bytes("VmRSS")
    model = build()
    return model, status_bytes("VmHWM") - before


def partitioned_build(experiment, accelerator):
    seed_everything(0)
    with build_context(accelerator):
        return build_framework(experiment)


@contextmanager
def zero3_hidden_from_transformers(accelerator):
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        accelerator.state.deepspeed_plugin.set_deepspeed_weakref()


def plain_build(experiment, accelerator, seed: int = 0):
    """On the host, unpartitioned: without zero.Init and with transformers not seeing ZeRO-3."""
    with zero3_hidden_from_transformers(accelerator):
        seed_everything(seed)
        return build_framework(experiment)


@contextmanager
def gathering_disabled():
    """vlablocks' own edits made on the partitioned (empty) tensors, as before `whole` gathered them."""
    real = partitioned.gathered
    partitioned.gathered = lambda params: nullcontext()
    try:
        yield
    finally:
        partitioned.gathered = real


def spread_differs(name: str, got: torch.Tensor, want: torch.Tensor, tolerance: float) -> list[str]:
    if abs(got.std() / want.std() - 1) <= tolerance:
        return []
    return [f"{name}: std {got.std():.4g} vs {want.std():.4g} built plainly"]


def compare(model, plain: dict, deterministic: set[str]) -> list[str]:
    """Names of `model`'s parameters in `plain` (gathered one at a time) that differ from the plain build (module
    docstring)."""
    wrong = []
    for name, param in model.named_parameters():
        if name not in plain:
            continue
        with whole(param):
            got, want = param.detach().float(), plain[name].detach().float()
            if name in deterministic:
                if not torch.equal(got, want):
                    wrong.append(f"{name}: not the plain build's (max |diff| {(got - want).abs().max():.3g})")
            elif want.numel() >= 4096:
                wrong += spread_differs(name, got, want, 0.15)
                if want.ndim == 2 and want[-8:].numel() >= 512:  # resize_token_embeddings appends added tokens' rows
                    wrong += spread_differs(f"{name} (last 8 rows)", got[-8:], want[-8:], 0.25)
    return wrong


def check(config: str, accelerator, scratch: Path) -> dict:
    experiment = load_config(config)
    plain_model = plain_build(experiment, accelerator, seed=0)
    plain = dict(plain_model.named_parameters())
    other = dict(plain_build(experiment, accelerator, seed=1).named_parameters())
    deterministic = {name for name, p in plain.items() if torch.equal(p, other[name])}
    model = partitioned_build(experiment, accelerator)
    result = {
        "params": len(plain),
        "partitioned": sum(is_partitioned(p) for p in model.parameters()),
        "deterministic": len(deterministic),
        "mismatched": compare(model, plain, deterministic),
    }
    weights = scratch / f"plain_rank{accelerator.process_index}.safetensors"
    save_file({name: p.detach().contiguous() for name, p in plain.items()}, str(weights))
    load_pretrained_modules(model, str(weights), [])
    result["loaded_mismatched"] = compare(model, plain, set(plain))  # every tensor exact now
    with gathering_disabled():
        planted = partitioned_build(experiment, accelerator)
    result["planted_mismatched"] = compare(planted, plain, deterministic)
    # A pretrained VLM (`vlm.base_vlm`): transformers' from_pretrained loads it into the partitioned layers.
    directory = scratch / "vlm"  # transformers writes from rank 0; the plain builds are the same on every rank
    plain_model.vlm.save_pretrained(directory)
    accelerator.wait_for_everyone()
    overrides = [f"--framework.vlm.base_vlm={directory}", "--framework.vlm.text_embedding_init_std=null"]
    vlm = {name: p for name, p in plain.items() if name.startswith("vlm.")}
    result["pretrained_mismatched"] = compare(
        partitioned_build(load_config(config, overrides), accelerator), vlm, set(vlm)
    )
    return result


def whole_file_load(model, directory: Path) -> None:
    """The loader before core/tensor_file.py: every tensor of the file at once, then the whole model gathered."""
    state = load_file(str(directory / "model.safetensors"))
    with whole(model):
        model.load_state_dict(state, strict=False)


def resume_growth(experiment, accelerator, plain_model, directory: Path) -> dict:
    """Peak RSS growth of loading the plain build's weights into a partitioned build: `load_weights` (then compared
    exactly) and, planted, `whole_file_load`."""
    directory.mkdir(parents=True, exist_ok=True)
    plain, seen = {}, set()
    for name, tensor in plain_model.state_dict().items():  # tied weights once, as checkpoints keep them
        if tensor.untyped_storage().data_ptr() not in seen:
            seen.add(tensor.untyped_storage().data_ptr())
            plain[name] = tensor.detach().contiguous()
    save_file(plain, str(directory / "model.safetensors"))
    model = partitioned_build(experiment, accelerator)
    _, growth = measured(lambda: load_weights(model, directory))
    exact = compare(model, dict(plain_model.named_parameters()), {n for n, _ in plain_model.named_parameters()})
    _, planted = measured(lambda: whole_file_load(partitioned_build(experiment, accelerator), directory))
    largest = max(4 * full_numel(p) for p in model.parameters())
    return {
        "resume_growth": growth,
        "resume_mismatched": exact,
        "planted_resume_growth": planted,
        "largest_parameter_fp32": largest,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--rss", action="store_true")
    parser.add_argument("--check", nargs="*", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    accelerator = make_accelerator(TrainerConfig(batch_size=1))
    out = Path(args.out)
    report = {"rank": accelerator.process_index, "world": accelerator.num_processes}
    if args.rss:
        experiment = load_config("configs/experiments/toy/qwen_oft.yaml", WIDE)
        model, report["partitioned_growth"] = measured(lambda: partitioned_build(experiment, accelerator))
        report["full_fp32"] = 4 * sum(full_numel(p) for p in model.parameters())
        report["partitioned_fraction"] = sum(is_partitioned(p) for p in model.parameters()) / len(
            list(model.parameters())
        )
        del model
        model, report["plain_growth"] = measured(lambda: plain_build(experiment, accelerator))
        report.update(resume_growth(experiment, accelerator, model, out / f"resume_rank{accelerator.process_index}"))
        del model
    report["checks"] = {config: check(config, accelerator, out) for config in args.check}
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(report, indent=1))
    end_distributed(accelerator)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
