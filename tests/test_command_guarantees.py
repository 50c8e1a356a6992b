"""Checkpoints and commands (issue 40, items 6, 9-12): a manifest that cannot be switched off by deleting it,
nonsense arguments refused before anything is written, no half-written outputs, messages that name the flag or
file, and files created with the user's umask."""

from __future__ import annotations

import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import pytest
import torch

from vlablocks.cli.arguments import output_dir
from vlablocks.cli.commands.serve import read_api_key
from vlablocks.cli.main import main
from vlablocks.core.atomic import atomic_write_text
from vlablocks.core.manifest import MANIFEST_FILE, CorruptCheckpointError, MissingManifestError, adopt
from vlablocks.core.policy.policy import Policy
from vlablocks.core.training.checkpoint import latest_checkpoint
from vlablocks.core.vlm.tokenizer import _write_atomically
from vlablocks.methods.steering.text_latent import TextLatents
from vlablocks.tools.bench.hostile import tiny_policy

RL_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "experiments" / "rl" / "toy_grpo.yaml")
OFT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "experiments" / "toy" / "qwen_oft.yaml")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_policy().save_pretrained(tmp_path_factory.mktemp("saved") / "ckpt")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---- 6. deleting or emptying the manifest switches no check off ----------------------------------------------------
def test_a_checkpoint_without_a_complete_manifest_is_refused_and_adopting_one_is_explicit(checkpoint, tmp_path):
    copy = Path(shutil.copytree(checkpoint, tmp_path / "copy"))
    (copy / MANIFEST_FILE).unlink()
    (copy / "config.yaml").write_text(
        (copy / "config.yaml").read_text()[: len((copy / "config.yaml").read_text()) // 2]
    )
    with pytest.raises(MissingManifestError, match=r"has no manifest.json.*--adopt"):
        Policy.from_pretrained(copy)
    for listed in ({}, {"config.yaml": {"size": 1, "sha256": "0"}}):
        (copy / MANIFEST_FILE).write_text(json.dumps({"format": 1, "files": listed}))
        with pytest.raises(CorruptCheckpointError, match="not listed in the manifest"):
            Policy.from_pretrained(copy)
    runs = tmp_path / "run"
    for step in (2, 4):  # a resume falls back past a checkpoint whose manifest was deleted
        shutil.copytree(checkpoint, runs / "checkpoints" / f"step_{step}")
    (runs / "checkpoints" / "step_4" / MANIFEST_FILE).unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert latest_checkpoint(runs).name == "step_2"
    assert any("step_4" in str(w.message) and "no manifest.json" in str(w.message) for w in caught)
    old = Path(shutil.copytree(checkpoint, tmp_path / "old"))
    (old / MANIFEST_FILE).unlink()  # a checkpoint from before manifests: its owner vouches for it once
    adopt(old)
    Policy.from_pretrained(old)
    with pytest.raises(ValueError, match="already has a manifest.json"):
        adopt(old)


# ---- 9. nonsense arguments are refused while parsing, before anything is written -----------------------------------
@pytest.mark.parametrize(
    "argv, named",
    [
        (["eval", "--env", "toy", "--policy", "random", "--episodes", "-3"], "--episodes: must be an integer >= 1"),
        (["eval", "--env", "toy", "--policy", "random", "--open-loop", "0"], "--open-loop: must be an integer >= 1"),
        (["sweep", "--variants", "v.yaml", "--eval-episodes", "0"], "--eval-episodes: must be an integer >= 1"),
        (["plan", "--config-yaml", OFT_CONFIG, "--num-gpus", "1", "--gpu_memory_gb", "nan"], "--gpu-memory-gb"),
        (["plan", "--config-yaml", OFT_CONFIG, "--num-gpus", "1", "--gpus_per_node", "0"], "--gpus-per-node"),
        (["serve", "--ckpt", "c", "--max-payload-mb", "nan"], "--max-payload-mb: must be a number"),
        (["serve", "--ckpt", "c", "--max-connections", "0"], "--max-connections"),
        (["text-latent", "extract", "--ckpt", "c", "--batch-size", "0"], "--batch-size: must be an integer >= 1"),
        (["text-latent", "decode", "--ckpt", "c", "--top-k", "0"], "--top-k: must be an integer >= 1"),
        (["value", "--ckpt", "c", "--data", "d", "--out", "o", "--gamma", "inf"], "--gamma"),
    ],
)
def test_nonsense_arguments_are_refused_while_parsing(argv, named, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert named in error and error.count("\n") == 1  # one line
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    "argv, named",
    [
        (["rl", "--config-yaml", RL_CONFIG, "--rl.iterations=0"], "rl.iterations must be an integer >= 1"),
        (["plan", "--config-yaml", OFT_CONFIG, "--num-gpus", "1", "--trainer.batch_size=0"], "trainer.batch_size"),
    ],
)
def test_nonsense_config_values_are_refused_before_anything_runs(argv, named, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, f"--run_dir={tmp_path / 'run'}"] if argv[0] == "rl" else argv) == 2
    assert named in capsys.readouterr().err
    assert files_under(tmp_path) == []


# ---- 10. a refused run leaves nothing half-written ------------------------------------------------------------------
def test_refused_runs_leave_no_half_written_output(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "rl_run"
    assert main(["rl", "--config-yaml", RL_CONFIG, "--init-ckpt", "missing", f"--run_dir={run_dir}"]) == 2
    assert "--init-ckpt missing: not a checkpoint directory" in capsys.readouterr().err and not run_dir.exists()
    (tmp_path / "latents_dir").mkdir()
    argv = ["text-latent", "extract", "--ckpt", str(checkpoint), "--data", "d", "--out", "latents_dir"]
    assert main(argv) == 2
    assert "--out latents_dir is a directory" in capsys.readouterr().err
    with pytest.raises(IsADirectoryError):
        TextLatents(["t"], [], [], [1]).save(tmp_path / "latents_dir")
    assert files_under(tmp_path) == ["latents_dir"]  # no latents_dir.partial
    # the tiny checkpoint's camera is "image", the toy env's "top": refused at the first request, inside the run
    assert main(["eval", "--env", "toy", "--ckpt", str(checkpoint), "--episodes", "1", "--out", "eval_out"]) == 2
    assert "camera" in capsys.readouterr().err and not (tmp_path / "eval_out").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError), output_dir(tmp_path / "kept"):
        raise RuntimeError("a folder that existed before is never removed")
    assert (tmp_path / "kept").is_dir()


# ---- 11. messages name the flag or the file -------------------------------------------------------------------------
def test_bad_files_are_named_in_one_line(tmp_path):
    latents = tmp_path / "latents.safetensors"
    TextLatents(["go"], [torch.zeros(2, 3, 4)], [torch.zeros(2, 4)], [1]).save(latents)
    latents.write_bytes(latents.read_bytes()[:20])  # truncated
    with pytest.raises(ValueError, match=f"{latents} is not a readable text-latent file"):
        TextLatents.load(latents)
    key = tmp_path / "key.bin"
    key.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=f"--api-key-file {key}: not a text file"):
        read_api_key(None, str(key))
    key.write_text("k\x00ey\n")
    with pytest.raises(ValueError, match=f"--api-key-file {key}: the first line must be printable"):
        read_api_key(None, str(key))


# ---- 12. files are created with the user's umask ----------------------------------------------------------------------
@pytest.mark.parametrize("umask, directory_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_checkpoints_and_written_files_have_the_users_umask(umask, directory_mode, file_mode, tmp_path):
    previous = os.umask(umask)
    try:
        saved = tiny_policy().save_pretrained(tmp_path / "ckpt")
        atomic_write_text(tmp_path / "stats.json", "{}")
        TextLatents(["go"], [torch.zeros(2, 3, 4)], [torch.zeros(2, 4)], [1]).save(tmp_path / "latents.safetensors")
        _write_atomically(tmp_path / "tokenizer", {"vocab.json": {}})  # the tiny tokenizer's cache folder
    finally:
        os.umask(previous)
    paths = [saved, *saved.rglob("*"), tmp_path / "stats.json", tmp_path / "latents.safetensors"]
    paths += [tmp_path / "tokenizer", tmp_path / "tokenizer" / "vocab.json"]
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in paths}
    expected = {str(p.relative_to(tmp_path)): directory_mode if p.is_dir() else file_mode for p in paths}
    assert modes == expected
