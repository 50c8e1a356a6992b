"""The `vlablocks` command line: one subcommand per module in `vlablocks/commands/`.

Each command module exposes `NAME`, `HELP`, `add_arguments(parser)` and `run(args, overrides) -> int`,
and keeps heavy imports inside `run` so that building the parser stays fast. Adding a subcommand is
adding one file. Unknown `--a.b=v` style arguments are collected as config overrides. Errors print
one line and exit 2 (a value out of its range among them: vlablocks/cli/arguments.py); `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from types import ModuleType

import vlablocks.cli.commands
from vlablocks.core.flags import FlagParser
from vlablocks.core.logs import show_project_logs


def command_modules() -> list[ModuleType]:
    """Every public module of `vlablocks.cli.commands`, sorted by command name."""
    modules = [
        importlib.import_module(f"vlablocks.cli.commands.{info.name}")
        for info in pkgutil.iter_modules(vlablocks.cli.commands.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    # exit_on_error=False: a value argparse refuses (out of range, not a number, not a choice) reaches `main` as an
    # ArgumentError, printed as the one-line error every other mistake gets.
    parser = FlagParser(prog="vlablocks", description="Build, train and serve VLA policies.", exit_on_error=False)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in command_modules():
        # argparse %-formats `help` strings (not descriptions without "%(prog)"): a literal "%" must be "%%".
        sub = subparsers.add_parser(
            module.NAME, help=module.HELP.replace("%", "%%"), description=module.HELP, exit_on_error=False
        )
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    show_project_logs()
    parser = build_parser()
    try:
        args, overrides = parser.parse_known_args(argv)  # argv None: argparse reads the command line
    except argparse.ArgumentError as exc:  # e.g. "argument --episodes: must be an integer >= 1, got '-3'"
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args._module.run(args, overrides) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`vlablocks list | head`): nothing left to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's advice: no error at exit's flush
        return 0
    except Exception as exc:  # every failure is one readable line unless --debug
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
