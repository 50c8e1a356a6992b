"""Registry: registration, duplicates, unknown names with suggestions, auto-discovery, plugins."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import vlablocks
import vlablocks.core.registry as registry_module
from vlablocks.core.build import build
from vlablocks.core.registry import KINDS, PLUGIN_GROUP, ComponentImportError, Registry, RegistryError

REPO = Path(vlablocks.__file__).resolve().parent.parent


def make_registry() -> Registry:
    registry = Registry("widget", "vlablocks.core.envs")
    registry._discovered = True  # these tests exercise registration only
    return registry


def test_register_and_lookup_uses_first_docstring_line():
    registry = make_registry()

    @registry.register("alpha")
    class Alpha:
        """Alpha widget.

        More text."""

    assert registry.get("alpha") is Alpha
    assert registry.entry("alpha").description == "Alpha widget."
    assert registry.names() == ["alpha"]


def test_duplicate_name_raises():
    registry = make_registry()

    @registry.register("alpha")
    class Alpha:
        pass

    with pytest.raises(RegistryError, match="duplicate widget name 'alpha'"):

        @registry.register("alpha")
        class Other:
            pass


def test_unknown_name_lists_available_and_closest():
    registry = make_registry()
    for name in ("flow_matching", "l1_regression"):
        registry.register(name)(type(name, (), {}))
    with pytest.raises(RegistryError) as info:
        registry.get("flow_matchin")
    message = str(info.value)
    assert "did you mean 'flow_matching'" in message
    assert "available: flow_matching, l1_regression" in message


def test_every_kind_has_a_package_that_imports():
    for registry in KINDS.values():
        registry.discover()  # raises if the bound package is missing


def run_cli(args: list[str], pythonpath: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "vlablocks.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


NEW_HEAD = textwrap.dedent('''
    from vlablocks.core.registry import ACTION_MODELS


    @ACTION_MODELS.register("dropped_in_head")
    class DroppedInHead:
        """A head added by dropping one file into the package."""
    ''')


def test_new_file_in_package_is_discovered(tmp_path):
    copy = tmp_path / "vlablocks"
    shutil.copytree(REPO / "vlablocks", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "core" / "action_model" / "dropped_in_head.py").write_text(NEW_HEAD)
    result = run_cli(["list", "action_models"], pythonpath=tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"\n  dropped_in_head +A head added by dropping one file into the package\.\n", result.stdout)
    # The installed tree is untouched: the head exists only in the copy.
    assert not (REPO / "vlablocks" / "core" / "action_model" / "dropped_in_head.py").exists()


def test_entry_point_plugin_registers(tmp_path):
    # A minimal installed distribution: its dist-info declares a `vlablocks.plugins` entry point.
    (tmp_path / "my_plugin.py").write_text(NEW_HEAD.replace("dropped_in_head", "plugin_head"))
    dist_info = tmp_path / "my_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[vlablocks.plugins]\nmy_plugin = my_plugin\n")
    result = run_cli(["list", "action_models"], pythonpath=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "plugin_head" in result.stdout


def write_package(root: Path, name: str, modules: dict[str, str], init: str = "") -> None:
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(init))
    for module, source in modules.items():
        (package / f"{module}.py").write_text(textwrap.dedent(source))


def test_a_module_that_fails_to_import_fails_every_lookup_until_it_imports(tmp_path, monkeypatch):
    """A missing optional package (as `diffusers` for the DDIM head) must not leave the registry marked as
    discovered: the second lookup in the same process would silently go on without that module's components."""
    monkeypatch.syspath_prepend(str(tmp_path))
    component = """
        from widgets_under_test import WIDGETS

        @WIDGETS.register("{name}")
        class Widget:
            pass
    """
    write_package(
        tmp_path,
        "widgets_under_test",
        {
            "good": component.format(name="good"),
            "needs_extra": "import extra_package_not_installed.sub\n" + textwrap.dedent(component.format(name="extra")),
        },
        init="from vlablocks.core.registry import Registry\n\nWIDGETS = Registry('widget', __name__)\n",
    )
    registry = importlib.import_module("widgets_under_test").WIDGETS
    expected = (
        "cannot import widget module widgets_under_test.needs_extra: it needs the package "
        "'extra_package_not_installed', which is not installed"
    )
    for lookup in (registry.names, lambda: registry.get("good"), lambda: build(registry, {"name": "extra"})):
        with pytest.raises(ComponentImportError) as info:
            lookup()
        assert str(info.value).startswith(expected) and "\n" not in str(info.value)
    assert not registry._discovered
    # Once the package is there, the same registry finds both components.
    write_package(tmp_path, "extra_package_not_installed", {"sub": ""})
    importlib.invalidate_caches()
    assert registry.names() == ["extra", "good"]


def test_a_bad_package_or_plugin_names_what_failed_every_time(monkeypatch):
    registry = Registry("widget", "vlablocks.no_such_package")
    for _ in range(2):
        with pytest.raises(
            ComponentImportError, match="cannot import widget package vlablocks.no_such_package: No module"
        ):
            registry.discover()
    broken = importlib.metadata.EntryPoint(name="broken", value="no_such_plugin_module:setup", group=PLUGIN_GROUP)
    monkeypatch.setattr(registry_module, "_plugins_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [broken] if group == PLUGIN_GROUP else [])
    for _ in range(2):
        with pytest.raises(ComponentImportError, match="entry point 'broken': No module named 'no_such_plugin_module'"):
            registry_module.load_plugins()
