"""One command-line flag style: kebab-case (`--config-yaml`), the underscore spelling (`--config_yaml`) accepted.

`FlagParser` is an `argparse.ArgumentParser` whose options are declared kebab-case. Before parsing, an argument
`--a_b` (or `--a_b=v`) is rewritten to `--a-b` when `--a-b` is one of this parser's options; anything else is left
as it is, so config overrides (`--trainer.max_steps=7`, `--run_dir x`) pass through untouched. Sub-parsers made
by `add_subparsers` are FlagParsers too.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def kebab(option: str) -> str:
    """`--config_yaml` -> `--config-yaml`; a short option or an already kebab-case one as it is."""
    return "--" + option[2:].replace("_", "-") if option.startswith("--") else option


class FlagParser(argparse.ArgumentParser):
    """argparse with kebab-case options that also accept their underscore spelling."""

    def add_argument(self, *names: str, **kwargs):
        for name in names:
            if name.startswith("--") and "_" in name:
                raise ValueError(f"option {name!r}: declare it kebab-case ({kebab(name)!r}); the underscore form works")
        return super().add_argument(*names, **kwargs)

    def normalize(self, args: Sequence[str]) -> list[str]:
        """`args` with each underscore spelling of one of this parser's options in its kebab-case form."""
        known = set(self._option_string_actions)
        out = []
        for arg in args:
            if arg == "--":  # everything after is positional
                out += args[len(out) :]
                break
            name, sep, value = arg.partition("=")
            if name.startswith("--") and "_" in name and kebab(name) in known:
                arg = kebab(name) + sep + value
            out.append(arg)
        return out

    def _parse_known_args(self, arg_strings: list[str], *rest, **options):
        # argparse's one door for the strings it parses, whether given or read from the command line, and the one
        # each sub-parser is entered through: normalizing here covers them all.
        return super()._parse_known_args(self.normalize(arg_strings), *rest, **options)
