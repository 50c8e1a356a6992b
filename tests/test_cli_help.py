"""`vlablocks --help` and `vlablocks COMMAND --help` print usage and exit 0 for every subcommand."""

from __future__ import annotations

import argparse

import pytest

from vlablocks.cli import build_parser, main


def subcommands() -> list[str]:
    """The command names the parser itself registers (so a new command module is covered without edits)."""
    parser = build_parser()
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    assert len(actions) == 1
    return sorted(actions[0].choices)


def run_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0, argv
    return capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys):
    out = run_help(["--help"], capsys)
    assert out.startswith("usage: vlablocks")
    for name in subcommands():
        assert name in out


@pytest.mark.parametrize("command", subcommands())
def test_each_command_help_exits_0(command, capsys):
    out = run_help([command, "--help"], capsys)
    assert out.startswith(f"usage: vlablocks {command}")
