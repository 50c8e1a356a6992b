"""Component registries: one decorator to register, one lookup to build.

Each component kind (frameworks, VLMs, action models, datasets, eval envs, ...) has one `Registry`
instance bound to a package. Looking a name up imports every public module of that package, so a new
file that decorates a class with `@REGISTRY.register("Name")` is found without editing any list.
Third-party packages register through the entry-point group ``vlablocks.plugins``: each entry point
names a module (imported for its side effects) or a callable (called with no arguments).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

PLUGIN_GROUP = "vlablocks.plugins"


class RegistryError(KeyError):
    """An unknown or duplicate component name. `str()` is one readable line."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ComponentImportError(ImportError):
    """A component module or plugin that failed to import, e.g. for a missing optional package. `str()` is one
    line naming the module and what it lacks; raised on every lookup until the import succeeds."""


def import_component_module(module: str, what: str) -> Any:
    """`importlib.import_module(module)`; an ImportError becomes a one-line ComponentImportError naming `what`
    (e.g. "action_model module vlablocks.core.action_model.diffusion") and, when a package is missing, that package."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing and missing != module and not module.startswith(f"{missing}."):
            package = missing.split(".")[0]
            reason = f"it needs the package {package!r}, which is not installed (No module named {missing!r})"
        else:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ComponentImportError(f"cannot import {what}: {reason}", name=missing) from exc


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate most similar to `name`, or None when nothing is reasonably close."""
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if not matches:
        lowered = {c.lower(): c for c in candidates}
        matches = [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)]
    return matches[0] if matches else None


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    description: str

    @property
    def config_class(self) -> type | None:
        """The dataclass declaring this component's options (the `Config` attribute), if any."""
        return getattr(self.obj, "Config", None)


def _same_definition(a: Any, b: Any) -> bool:
    # The same source file imported twice (as __main__ and as a package module) is one component.
    try:
        return a.__qualname__ == b.__qualname__ and inspect.getfile(a) == inspect.getfile(b)
    except (TypeError, AttributeError):
        return False


_plugins_loaded = False


def load_plugins() -> None:
    """Imports every installed ``vlablocks.plugins`` entry point once per process (again after a failure)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True  # set first: a plugin that looks a component up while loading does not recurse
    try:
        for entry_point in importlib.metadata.entry_points(group=PLUGIN_GROUP):
            # Imported first through the one-line error; load() then only looks the attribute up.
            import_component_module(entry_point.module, f"{PLUGIN_GROUP} entry point {entry_point.name!r}")
            loaded = entry_point.load()
            if callable(loaded) and not inspect.ismodule(loaded):
                loaded()
    except BaseException:
        _plugins_loaded = False  # not loaded: the next lookup tries again and fails just as clearly
        raise


class Registry:
    """Name -> component (class or factory) for one component kind."""

    def __init__(self, kind: str, package: str | None) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, Entry] = {}
        self._discovered = False

    def register(self, name: str, description: str | None = None) -> Callable[[Any], Any]:
        """Decorator: `@ACTION_MODELS.register("l1_regression")`. Duplicate names raise."""

        def decorator(obj: Any) -> Any:
            existing = self._entries.get(name)
            if existing is not None and not _same_definition(existing.obj, obj):
                raise RegistryError(
                    f"duplicate {self.kind} name {name!r}: already registered by "
                    f"{existing.obj.__module__}.{existing.obj.__qualname__}; pick another name"
                )
            text = description or next(iter((inspect.getdoc(obj) or "").strip().splitlines()), "")
            self._entries[name] = Entry(name=name, obj=obj, description=text)
            return obj

        return decorator

    def discover(self) -> None:
        """Imports every public module of the bound package, then installed plugins.

        A module that fails to import raises ComponentImportError, and the registry stays undiscovered: every
        later lookup raises it again instead of silently going on without that module's components.
        """
        if self._discovered:
            return
        self._discovered = True  # set first: a module that looks a component up while importing does not recurse
        try:
            if self.package is not None:
                package = import_component_module(self.package, f"{self.kind} package {self.package}")
                for module in pkgutil.iter_modules(package.__path__):
                    if not module.name.startswith("_"):
                        name = f"{self.package}.{module.name}"
                        import_component_module(name, f"{self.kind} module {name}")
            load_plugins()
        except BaseException:
            self._discovered = False
            raise

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry]:
        self.discover()
        for name in sorted(self._entries):
            yield self._entries[name]

    def entry(self, name: str) -> Entry:
        self.discover()
        if name not in self._entries:
            available = sorted(self._entries)
            suggestion = closest(name, available)
            hint = f"; did you mean {suggestion!r}?" if suggestion else ""
            raise RegistryError(f"unknown {self.kind} {name!r}{hint} (available: {', '.join(available) or 'none'})")
        return self._entries[name]

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._entries


class RegistryUnion(Registry):
    """A read-only view of several registries, looked up as one: names must be distinct across them.

    A config section whose `name` may come from any of them (`framework:` names a policy or a value model) is
    validated and built through the union; `registry_of(name)` says which part holds a name.
    """

    def __init__(self, kind: str, parts: tuple[Registry, ...]) -> None:
        super().__init__(kind, None)
        self.parts = parts

    def register(self, name: str, description: str | None = None) -> Callable[[Any], Any]:
        raise TypeError(f"{self.kind} is a view of {', '.join(p.kind for p in self.parts)}: register into one of them")

    def discover(self) -> None:
        """Discovers every part, then merges their entries (again on each call: parts may gain plugins)."""
        merged: dict[str, Entry] = {}
        for part in self.parts:
            for entry in part.entries():
                if entry.name in merged:
                    raise RegistryError(
                        f"{entry.name!r} is both a {self.registry_of(entry.name).kind} and a {part.kind}; rename one"
                    )
                merged[entry.name] = entry
        self._entries = merged

    def registry_of(self, name: str) -> Registry:
        """The part that holds `name` (RegistryError naming every part's components when none does)."""
        for part in self.parts:
            if name in part:
                return part
        self.entry(name)  # raises the one-line error with a suggestion
        raise AssertionError("unreachable")


FRAMEWORKS = Registry("framework", "vlablocks.core.framework")
VLMS = Registry("vlm", "vlablocks.core.vlm")
ACTION_MODELS = Registry("action_model", "vlablocks.core.action_model")
DATASETS = Registry("dataset", "vlablocks.core.dataloader")
EVAL_ENVS = Registry("eval_env", "vlablocks.core.envs")
GEOMETRIC_ENCODERS = Registry("geometric_encoder", "vlablocks.core.geometry")
FUSIONS = Registry("fusion", "vlablocks.core.geometry")
# Auxiliary losses a framework config composes (`framework.auxiliary_losses: {name: options}`).
AUXILIARY_LOSSES = Registry("auxiliary_loss", "vlablocks.core.auxiliary")
# The per-sample steps a processor chains, by the names `ProcessorConfig.sample_steps` lists.
PROCESSOR_STEPS = Registry("processor_step", "vlablocks.core.processor")
# Sections of the experiment config that a method declares (`rl:`); plugins only, no package of the core's.
CONFIG_SECTIONS = Registry("config_section", None)
# Models that predict values, not actions (vlablocks/methods/value/); plugins only.
VALUE_MODELS = Registry("value_model", None)
# What a config's `framework:` section may name: a policy or a value model. Both kinds of checkpoints keep that
# section (`framework: {name: QwenValue}`), so configs and checkpoints of value models load unchanged.
MODELS = RegistryUnion("model", (FRAMEWORKS, VALUE_MODELS))

# Plural names as typed on the command line (`vlablocks list action_models`).
KINDS: dict[str, Registry] = {
    "frameworks": FRAMEWORKS,
    "value_models": VALUE_MODELS,
    "vlms": VLMS,
    "action_models": ACTION_MODELS,
    "datasets": DATASETS,
    "eval_envs": EVAL_ENVS,
    "geometric_encoders": GEOMETRIC_ENCODERS,
    "fusions": FUSIONS,
    "auxiliary_losses": AUXILIARY_LOSSES,
}


# Kinds a config field may name besides those listed (`registry_field("models")`: ExperimentConfig.framework).
VIEWS: dict[str, Registry] = {"models": MODELS}


def kind(name: str) -> Registry:
    """The registry for a plural kind name (or a view of several), with a suggestion when misspelled."""
    if name in VIEWS:
        return VIEWS[name]
    if name not in KINDS:
        suggestion = closest(name, list(KINDS))
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        raise RegistryError(f"unknown component kind {name!r}{hint} (available: {', '.join(KINDS)})")
    return KINDS[name]
