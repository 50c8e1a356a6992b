"""The shape of configs/: one file per framework, platform, dataset kind and launcher; every experiment under
configs/experiments/<name>/; each body written once (variants are `_base_` plus a small diff); every config path
that the docs, examples and code name exists."""

from __future__ import annotations

import argparse
import itertools
import json
import re
from pathlib import Path

import pytest
import yaml

from vlablocks.core.config import load_config, load_yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
EXPERIMENTS = CONFIGS / "experiments"
VARIANTS = EXPERIMENTS / "spatial_variants"  # fragments: one framework diff each, applied by ablations/ and toy3d/
TOP_LEVEL = {"frameworks", "platforms", "datasets", "accelerate", "experiments"}
ALL_YAML = sorted(EXPERIMENTS.rglob("*.yaml"))


def raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def is_prompt_list(data: dict) -> bool:
    """A prompt file: instruction -> its alternative phrasings."""
    return bool(data) and all(isinstance(k, str) and isinstance(v, list) for k, v in data.items())


def is_fragment(path: Path) -> bool:
    return path.parent == VARIANTS


EXPERIMENT_YAML = [p for p in ALL_YAML if not is_fragment(p) and not is_prompt_list(raw(p))]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def bases(path: Path) -> list[Path]:
    base = raw(path).get("_base_") or []
    return [(path.parent / b).resolve() for b in ([base] if isinstance(base, str) else base)]


def test_top_level_holds_only_the_component_folders_and_experiments():
    entries = {p.name for p in CONFIGS.iterdir()}
    assert entries == TOP_LEVEL
    assert all((CONFIGS / name).is_dir() for name in entries)
    for kind in ("frameworks", "platforms", "datasets"):  # one flat file per component, no experiment trees
        assert not [p for p in (CONFIGS / kind).iterdir() if p.is_dir()], kind


def test_every_experiment_is_one_folder_deep():
    for path in ALL_YAML:
        assert path.parent.parent == EXPERIMENTS, f"{rel(path)}: configs/experiments/<name>/<file>.yaml"


@pytest.mark.parametrize("path", EXPERIMENT_YAML, ids=rel)
def test_every_experiment_config_loads(path):
    load_config(path, [])


def test_prompt_lists_are_the_prompts_folder():
    prompt_lists = [p for p in ALL_YAML if not is_fragment(p) and is_prompt_list(raw(p))]
    assert prompt_lists and all(p.parent.name == "prompts" for p in prompt_lists)
    assert all(p in prompt_lists for p in (EXPERIMENTS / "prompts").glob("*.yaml"))


def test_variant_fragments_are_framework_diffs_and_each_is_used():
    fragments = sorted(VARIANTS.glob("*.yaml"))
    assert len(fragments) == 5
    used = {b for p in EXPERIMENT_YAML for b in bases(p)}
    for fragment in fragments:
        assert set(raw(fragment)) == {"framework"}, f"{rel(fragment)}: only a framework diff, no _base_"
        assert fragment.resolve() in used, f"{rel(fragment)} is applied by no experiment"


@pytest.mark.parametrize("folder", ["ablations", "toy3d"])
def test_spatial_ablations_are_a_base_plus_one_variant(folder):
    files = sorted((EXPERIMENTS / folder).glob("spatial_*.yaml"))
    assert files
    for path in files:
        fragments = [b for b in bases(path) if b.parent == VARIANTS.resolve()]
        assert len(fragments) == 1 and len(bases(path)) == 2, f"{rel(path)}: _base_: [<base>, <variant>]"
        body = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert len(body) <= 15, f"{rel(path)} is no small diff ({len(body)} lines)"


def test_no_two_experiments_resolve_to_the_same_body_unless_one_is_a_declared_variant():
    """Copy-pasted experiments differ only by run_dir; a file that applies a variant fragment may equal its base
    (the variant that is the base's default, e.g. tokenwise fusion), since the variant is declared, not copied."""
    declared = {p for p in EXPERIMENT_YAML if any(b.parent == VARIANTS.resolve() for b in bases(p))}
    body = {}
    for path in EXPERIMENT_YAML:
        data = load_yaml(path)
        data.pop("run_dir", None)
        body.setdefault(json.dumps(data, sort_keys=True), []).append(path)
    for same in body.values():
        undeclared = [rel(p) for p in same if p not in declared]
        assert len(undeclared) <= 1, f"identical experiments: {undeclared}; make one a `_base_` of the other"


def test_the_demo_default_is_a_shipped_experiment():
    from vlablocks.cli.commands import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    default = REPO / parser.get_default("config_yaml")
    assert default.is_file() and default.parent == EXPERIMENTS / "demo"


CONFIG_PATH = re.compile(r"(?<![\w/.\-])configs/[\w/.*{},\-]+\.(?:yaml|json)")


def expand_braces(path: str) -> list[str]:
    parts = re.split(r"\{([^}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def test_every_config_path_named_in_docs_examples_and_code_exists():
    sources = [REPO / "README.md", REPO / "Makefile"]
    for folder in ("docs", "examples", "configs", "vlablocks", "scripts"):
        sources += [p for p in (REPO / folder).rglob("*") if p.suffix in {".md", ".py", ".yaml", ".sh", ".sbatch"}]
    missing = []
    for source in sources:
        for match in CONFIG_PATH.findall(source.read_text(errors="replace")):
            for path in expand_braces(match):
                if not any(REPO.glob(path)):
                    missing.append(f"{rel(source)}: {path}")
    assert not missing, missing
