"""`vlablocks --help` and `vlablocks COMMAND --help` print usage and exit 0 for every subcommand."""

from __future__ import annotations

import argparse

import pytest

from vlablocks.cli.main import build_parser, main


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


def runnable_modules() -> list[str]:
    """Package modules run as `python -m MODULE` (they define `main(argv)`), found from the sources."""
    import importlib.util
    import pkgutil

    import vlablocks

    found = []
    for info in pkgutil.walk_packages(vlablocks.__path__, "vlablocks."):
        origin = importlib.util.find_spec(info.name).origin
        if origin and origin.endswith(".py") and "def main(argv" in open(origin).read():
            found.append(info.name)
    return sorted(found)


@pytest.mark.parametrize("module", runnable_modules())
def test_each_runnable_module_help_exits_0(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0, module
    assert capsys.readouterr().out.startswith("usage:")
