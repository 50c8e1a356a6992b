"""One flag style: options are kebab-case; the underscore spelling is accepted; config overrides pass through."""

from __future__ import annotations

import pytest

from vlablocks.cli.main import build_parser
from vlablocks.core.flags import FlagParser


def test_every_command_option_is_kebab_case():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    options = [name for sub in subparsers.choices.values() for name in sub._option_string_actions]
    assert "--config-yaml" in options and "--max-connections" in options
    assert [name for name in options if "_" in name] == []


def test_the_underscore_spelling_parses_like_the_kebab_one_and_overrides_pass_through():
    parser = build_parser()
    kebab, rest_kebab = parser.parse_known_args(["train", "--config-yaml", "a.yaml", "--trainer.max_steps=7"])
    under, rest_under = parser.parse_known_args(["train", "--config_yaml=a.yaml", "--trainer.max_steps=7"])
    assert kebab.config_yaml == under.config_yaml == "a.yaml"
    assert rest_kebab == rest_under == ["--trainer.max_steps=7"]
    # a top-level config key with an underscore is an override, not an option: left as written
    _, rest = parser.parse_known_args(["train", "--config_yaml", "a.yaml", "--run_dir", "x"])
    assert rest == ["--run_dir", "x"]


def test_a_parser_refuses_an_underscore_option_and_leaves_arguments_after_a_double_dash():
    parser = FlagParser(prog="p")
    with pytest.raises(ValueError, match="declare it kebab-case"):
        parser.add_argument("--batch_size")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args(["--batch_size", "3", "--", "--batch_size"])
    assert args.batch_size == 3 and args.rest == ["--batch_size"]
