"""The one-way house: core <- methods <- tools <- cli, no cycle between folders (tests/import_layers.py)."""

from __future__ import annotations

from pathlib import Path

from import_layers import folder_ties, import_edges, layer_violations, unit_cycles

ROOT = Path(__file__).resolve().parents[1]
BELOW = ("deployment",)  # the separately installable client: a leaf under every layer


def test_the_package_imports_downwards_only_and_has_no_cycle_between_folders():
    edges = import_edges(ROOT, "vlablocks", BELOW)
    assert len(edges) > 100, "the import graph came back (nearly) empty: the reader is broken"
    assert layer_violations(edges, BELOW) == []
    assert unit_cycles(edges) == []


def test_each_layer_is_reached_and_the_client_stays_a_leaf():
    ties = folder_ties(import_edges(ROOT, "vlablocks", BELOW))
    assert "vlablocks.core.framework" in ties["vlablocks.methods.rl"]
    assert "vlablocks.methods.rl" in ties["vlablocks.cli.commands"]
    assert "deployment" not in ties  # the client imports nothing of the project


def plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


CLEAN = {
    "proj/__init__.py": "",
    "proj/core/__init__.py": "",
    "proj/core/registry.py": "",
    "proj/core/vlm/__init__.py": "",
    "proj/core/vlm/base.py": "from proj.core import registry\n",
    "proj/methods/__init__.py": "",
    "proj/methods/rl/__init__.py": "",
    "proj/methods/rl/loop.py": "from proj.core.vlm.base import x\n",
    "proj/cli/__init__.py": "",
    "proj/cli/main.py": "def main():\n    from proj.methods.rl import loop\n",
    "leaf/__init__.py": "",
}


def test_the_checker_finds_a_planted_upward_import(tmp_path):
    plant(tmp_path, CLEAN)
    assert layer_violations(import_edges(tmp_path, "proj", ("leaf",)), ("leaf",)) == []
    # an import inside a function of the core, reaching up to a method
    plant(tmp_path, {"proj/core/vlm/base.py": "def f():\n    from proj.methods.rl.loop import y\n"})
    problems = layer_violations(import_edges(tmp_path, "proj", ("leaf",)), ("leaf",))
    assert problems == [
        "proj/core/vlm/base.py:2: proj.core.vlm (core) imports proj.methods.rl (methods), a higher layer"
    ]


def test_the_checker_finds_a_planted_relative_import_and_a_leaf_reaching_up(tmp_path):
    plant(tmp_path, CLEAN)
    plant(tmp_path, {"proj/core/vlm/base.py": "from ...cli import main\n", "leaf/__init__.py": "import proj.core\n"})
    problems = layer_violations(import_edges(tmp_path, "proj", ("leaf",)), ("leaf",))
    assert any("proj.core.vlm (core) imports proj.cli.main (cli)" in p for p in problems)
    assert any("leaf sits below the project and imports proj.core" in p for p in problems)


def test_the_checker_finds_a_planted_cycle_between_folders_of_one_layer(tmp_path):
    plant(tmp_path, CLEAN)
    assert unit_cycles(import_edges(tmp_path, "proj")) == []
    plant(tmp_path, {"proj/core/registry.py": "import proj.core.vlm.base\n"})
    assert unit_cycles(import_edges(tmp_path, "proj")) == [["proj.core.registry", "proj.core.vlm"]]
