"""Experiment configuration: OmegaConf YAML with `_base_` inheritance, dotlist overrides, validation.

A config is a YAML file (optionally extending others through `_base_: path` or a list of paths,
resolved relative to the file) plus overrides in any of the spellings `--a.b=v`, `--a.b v`, `a.b=v`.
The merged result is checked against typed dataclasses: the experiment schema below, and for each
component section (`framework`, `framework.action_model`, `dataset`, ...) the `Config` dataclass of the
component its `name` selects. Unknown keys and wrongly typed values are errors naming the key, with
the closest valid key or the expected type. Missing keys take the dataclass defaults.

The experiment is parsed once, into one frozen typed object (`ExperimentConfig`: `platform` and
`trainer` typed, component sections as validated dicts that `vlablocks.core.build.build` turns into each
component's own `Config`); everything downstream takes that object.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlablocks.core.config.trainer import TrainerConfig
from vlablocks.core.registry import CONFIG_SECTIONS, closest
from vlablocks.core.registry import kind as registry_kind

BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A config problem, described in one line that names the key and the fix."""


def section_field(name: str) -> Any:
    """A config section whose schema a method registers (`@CONFIG_SECTIONS.register(name)` on a frozen dataclass):
    the core names the slot, the method owns its options. Parsed into that dataclass; absent means its defaults."""
    return dataclasses.field(default=None, metadata={"section": name})


def moved_keys(schema: type) -> dict[str, tuple[str, ...]]:
    """A Config's keys that went elsewhere, {old key: its new places} (its `MOVED` class attribute, each value a
    dotted path or a tuple of them): a config that sets one is told where it went; a checkpoint written with it is
    read as `upgrade_moved_keys` says."""
    return {
        key: (place,) if isinstance(place, str) else tuple(place)
        for key, place in vars(schema).get("MOVED", {}).items()
    }


def upgrade_moved_keys(sections: dict) -> dict:
    """A config written before some of its framework keys moved (a checkpoint's config.yaml) -> the config this
    version reads: a key whose new place is in the framework section is set there (`readout_loss_weight: 1` ->
    `auxiliary_losses: {readout: {weight: 1}}`, unless 0: an auxiliary loss of weight 0 is not built anyway); one
    that moved out of it (a training option, e.g. alg1's schedule to trainer.loss_schedule) is dropped."""
    framework = sections.get("framework")
    if not isinstance(framework, dict) or framework.get("name") not in registry_kind("models"):
        return sections  # parse_experiment names what is wrong with it
    config_class = registry_kind("models").entry(framework["name"]).config_class
    moved = moved_keys(config_class) if config_class is not None else {}
    upgraded = {key: value for key, value in framework.items() if key not in moved}
    for key, places in moved.items():
        if key not in framework or framework[key] == 0:
            continue
        for place in places:
            if place.startswith("framework."):
                *parents, leaf = place.split(".")[1:]
                node = upgraded
                for parent in parents:
                    node = node.setdefault(parent, {})
                node[leaf] = framework[key]
    return {**sections, "framework": upgraded}


def registry_field(kind: str, default: str | None = None) -> Any:
    """A config field holding a component's options, selected by its `name` from registry `kind`.

    With no default the section is optional: absent means None (the command that needs it says so).
    """
    if default is None:
        return dataclasses.field(default=None, metadata={"registry": kind})
    return dataclasses.field(default_factory=lambda: {"name": default}, metadata={"registry": kind})


def registry_map(kind: str) -> Any:
    """A config field holding any number of components of registry `kind`, keyed by their names:
    `{name: {option: value}}` (each validated by that component's Config; empty by default)."""
    return dataclasses.field(default_factory=dict, metadata={"registry_map": kind})


# ----------------------------------------------------------------------------------------------
# Loading: YAML files with bases, and overrides.


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Reads a YAML file, merging the files named by its `_base_` key underneath it."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in _seen:
        raise ConfigError(f"circular _base_ chain: {' -> '.join(str(p) for p in (*_seen, path))}")
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and OmegaConf errors alike
        raise ConfigError(f"cannot parse {path}: {exc}".splitlines()[0]) from exc
    data = OmegaConf.to_container(node, resolve=False) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, None) or []
    merged = OmegaConf.create({})
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = OmegaConf.merge(merged, load_yaml(path.parent / base, (*_seen, path)))
    return OmegaConf.to_container(OmegaConf.merge(merged, data), resolve=False)


def parse_overrides(args: list[str]) -> list[str]:
    """Normalizes `--a.b=v`, `--a.b v` and `a.b=v` into OmegaConf dotlist entries `a.b=v`."""
    dotlist: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key = arg[2:]
            if "=" in key:
                dotlist.append(key)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                dotlist.append(f"{key}={args[i + 1]}")
                i += 1
            else:
                raise ConfigError(f"override {arg} has no value; write {arg}=VALUE")
        elif "=" in arg:
            dotlist.append(arg)
        else:
            raise ConfigError(f"cannot read override {arg!r}; write key.path=VALUE or --key.path VALUE")
        i += 1
    return dotlist


def merge_overrides(data: dict, overrides: list[str]) -> dict:
    """Applies CLI overrides (any supported spelling) on top of a config mapping."""
    dotlist = parse_overrides(overrides)
    try:
        merged = OmegaConf.merge(OmegaConf.create(data), OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot apply overrides {dotlist}: {exc}".splitlines()[0]) from exc
    return OmegaConf.to_container(merged, resolve=False)


def resolve(data: dict) -> dict:
    """Resolves `${...}` interpolations."""
    try:
        return OmegaConf.to_container(OmegaConf.create(data), resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve interpolation: {exc}".splitlines()[0]) from exc


def load_config(config_yaml: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """YAML (+ bases) + overrides -> the validated experiment, every default filled in."""
    data = load_yaml(config_yaml) if config_yaml else {}
    return parse_experiment(resolve(merge_overrides(data, overrides or [])))


def parse_experiment(data: dict) -> ExperimentConfig:
    """A plain experiment mapping -> the validated, frozen `ExperimentConfig` (the one place it is parsed)."""
    return to_dataclass(ExperimentConfig, data)


# ----------------------------------------------------------------------------------------------
# Validation against dataclasses.


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a type annotation (ints are accepted where floats are expected)."""
    if annotation is Any or annotation is object:
        return True
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            return False
        args = typing.get_args(annotation)
        return not args or all(_matches(v, args[1]) for v in value.values())
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _component_class(kind: str, options: dict, path: str) -> type | None:
    if "name" not in options:
        raise ConfigError(f"{path} needs a 'name' naming a registered {kind[:-1]}")
    try:
        return registry_kind(kind).entry(options["name"]).config_class
    except KeyError as exc:
        raise ConfigError(f"{path}.name: {exc}") from exc


def validate(data: Any, schema: type, path: str = "") -> dict:
    """Checks `data` against dataclass `schema`; returns it with defaults filled in."""
    prefix = f"{path}." if path else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    moved = moved_keys(schema)
    for key in data:
        if key in moved:
            raise ConfigError(f"{prefix}{key} moved to {' and '.join(moved[key])}; set it there")
        if key not in fields:
            suggestion = closest(str(key), list(fields))
            hint = f" — did you mean {prefix}{suggestion}?" if suggestion else f" (valid keys: {', '.join(fields)})"
            raise ConfigError(f"unknown key {prefix}{key}{hint}")
    result: dict[str, Any] = {}
    for name, field in fields.items():
        key_path = f"{prefix}{name}"
        if name in data:
            value = data[name]
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            raise ConfigError(f"missing required key {key_path}")
        section = field.metadata.get("section")
        if section is not None:
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            result[name] = validate(value if value is not None else {}, CONFIG_SECTIONS.get(section), key_path)
            continue
        if "registry_map" in field.metadata:
            result[name] = _validate_map(value, field.metadata["registry_map"], key_path)
            continue
        kind = field.metadata.get("registry")
        if kind is not None:
            if value is None and field.default is None:
                result[name] = None
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{key_path} must be a mapping with a 'name', got {value!r}")
            if "name" not in value and field.default_factory is not dataclasses.MISSING:
                value = {**field.default_factory(), **value}  # options for the default component
            component = _component_class(kind, value, key_path)
            result[name] = validate(value, component, key_path) if component else dict(value)
            continue
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            if dataclasses.is_dataclass(value):  # a default_factory instance
                value = dataclasses.asdict(value)
            result[name] = validate(value if value is not None else {}, annotation, key_path)
            continue
        if not _matches(value, annotation):
            raise ConfigError(f"{key_path}: expected {_type_name(annotation)}, got {type(value).__name__} ({value!r})")
        result[name] = float(value) if annotation is float else value
    return result


def _validate_map(value: Any, kind: str, path: str) -> dict:
    """A `registry_map` field: {component name: its options} -> each validated, defaults filled in, without `name`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path} must be a mapping of {kind} names to their options, got {value!r}")
    checked = {}
    for component, options in value.items():
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise ConfigError(f"{path}.{component} must be a mapping of options, got {options!r}")
        try:
            schema = registry_kind(kind).entry(str(component)).config_class
        except KeyError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        full = validate({"name": component, **options}, schema, f"{path}.{component}") if schema else dict(options)
        checked[component] = {k: v for k, v in full.items() if k != "name"}
    return checked


def to_dataclass(schema: type, data: dict, path: str = "") -> Any:
    """Validates `data` and builds the (frozen) dataclass; registry fields stay validated dicts."""
    checked = validate(data, schema, path)
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for field in dataclasses.fields(schema):
        value = checked[field.name]
        annotation = hints[field.name]
        if "section" in field.metadata:
            value = to_dataclass(CONFIG_SECTIONS.get(field.metadata["section"]), value, f"{path}.{field.name}")
        elif "registry" not in field.metadata and dataclasses.is_dataclass(annotation):
            value = to_dataclass(annotation, value, f"{path}.{field.name}")
        kwargs[field.name] = value
    return schema(**kwargs)


def to_yaml(data: dict) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(data))


# ----------------------------------------------------------------------------------------------
# The experiment schema. Component sections are validated by the selected component's Config.


@dataclasses.dataclass(frozen=True)
class PlatformConfig:
    """Embodiment dimensions: the single source of truth for chunk length and action/state sizes."""

    name: str = "toy"
    action_horizon: int = 8  # actions per predicted chunk (T)
    action_dim: int = 7  # D
    state_dim: int = 8  # proprioception size
    # Actions of each chunk a client plays before it asks again (LeRobot's n_action_steps, openpi's replan_steps);
    # served as metadata, the default of `vlablocks eval` and the demo. None: the whole chunk.
    n_action_steps: int | None = None


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment: built by `load_config` / `parse_experiment`, written back with `to_dict()`."""

    run_dir: str = "runs/default"
    seed: int = 42
    platform: PlatformConfig = dataclasses.field(default_factory=PlatformConfig)
    framework: dict | None = registry_field("models")  # a policy (FRAMEWORKS) or a value model (VALUE_MODELS)
    dataset: dict | None = registry_field("datasets")
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    rl: Any = section_field("rl")  # `vlablocks rl` only: vlablocks/methods/rl/config.py registers its schema

    def to_dict(self) -> dict:
        """The plain mapping (what `config.yaml` holds); `parse_experiment(x.to_dict()) == x`."""
        return dataclasses.asdict(self)
