"""`vlablocks serve`: argument handling and the checkpoint path's errors (a served checkpoint: see the lead's test)."""

from __future__ import annotations

from vlablocks.cli.main import main


def test_serve_names_a_directory_that_is_not_a_checkpoint(tmp_path, capsys):
    assert main(["serve", "--ckpt", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "is not a vlablocks checkpoint" in err and len(err.splitlines()) == 1


def test_serve_refuses_config_overrides(tmp_path, capsys):
    assert main(["serve", "--ckpt", str(tmp_path), "--trainer.max_steps=3"]) == 2
    assert "serve takes no config overrides" in capsys.readouterr().err
