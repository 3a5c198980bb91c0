"""Loading a run config: YAML files, `extends:`, command-line overrides, per-stage configs.

A YAML file may name a base with `extends: other.yaml` (relative to itself); the two are
deep-merged, the child winning. Command-line overrides `a.b=c` are applied last, their values
parsed as YAML. Unknown keys and invalid values fail at load with the dotted field path —
nothing is silently changed. Stages (`stages: [...]`) carry their own overrides, which are
applied to the run config and validated at load, so a bad stage fails before anything starts.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from system.config.errors import ConfigError
from system.config.models import RunConfig


def model_family(path: str | Path) -> str:
    """The family of an HF model directory, from its config's model_type."""
    model_type = json.loads((Path(path) / "config.json").read_text())["model_type"]
    if model_type not in ("qwen2_5_vl", "qwen3_vl"):
        raise ValueError(f"{path}: model_type {model_type!r} is not qwen2_5_vl or qwen3_vl")
    return model_type


def stage_config(config: RunConfig, index: int) -> RunConfig:
    """The config stage `index` runs with: `config` with the stage's overrides applied."""
    stage = config.stages[index]
    data = config.model_dump(mode="python")
    _apply_overrides(data, stage.overrides, origin=f"stages[{index}].overrides")
    data["stages"] = [stage.model_dump(mode="python")]
    return _validate(data, origin=f"stages[{index}] ({stage.name})")


def load_config(
    path: str | Path, overrides: list[str] | None = None, base_dir: str | Path | None = None
) -> RunConfig:
    """Load a YAML config (following `extends:`), apply `a.b=c` overrides, validate.

    Every stage's resolved config is validated too, so a bad stage fails here. With
    `base_dir`, every path of the run (`absolute_paths`) is made absolute against it.
    """
    path = Path(path)
    data = _load_yaml_tree(path, seen=())
    parsed = dict(parse_override(o) for o in overrides or [])
    _apply_overrides(data, parsed, origin="command line")
    config = _validate(data, origin=str(path))
    if base_dir is not None:
        config = absolute_paths(config, Path(base_dir))
    for i in range(len(config.stages)):
        stage_config(config, i)
    return config


# The run's paths, as key paths into the config: plain strings, and lists of {path: ...}.
_PATHS = (("output_dir",), ("model", "path"), ("data", "root"), ("data", "synthetic", "out"))
_PATH_LISTS = (("data", "train"), ("data", "eval"))


def absolute_paths(config: RunConfig, base: Path) -> RunConfig:
    """`config` with every path (output_dir, model.path, data.root, data.synthetic.out, the
    data.train / data.eval files — in the stages' overrides too) absolute against `base`.

    A driver resolves them once, before Ray starts: relative paths mean "from where the
    command was run", and on a cluster every process must get the same absolute path (a
    Ray job's driver, its actors and other nodes each have their own working directory)."""
    data = config.model_dump(mode="python")
    _absolutize(data, base)
    for stage in data["stages"]:
        for key, value in list(stage["overrides"].items()):
            stage["overrides"][key] = _absolutize_override(key, value, base)
    return _validate(data, origin=f"paths resolved against {base}")


def _absolutize(tree: dict[str, Any], base: Path) -> None:
    def resolve(value: Any) -> Any:
        return os.path.normpath(base / value) if isinstance(value, str) and value else value

    for keys in _PATHS:
        node = _get(tree, keys[:-1])
        if isinstance(node, dict) and keys[-1] in node:
            node[keys[-1]] = resolve(node[keys[-1]])
    for keys in _PATH_LISTS:
        for spec in _get(tree, keys) or []:
            if isinstance(spec, dict) and "path" in spec:
                spec["path"] = resolve(spec["path"])


def _absolutize_override(key: str, value: Any, base: Path) -> Any:
    """One stage override's value with its paths made absolute (`key` is dotted)."""
    parts = key.split(".")
    if any(_key_index(p)[1] is not None for p in parts):  # `data.train[0].path` and the like
        last = _key_index(parts[-1])[0]
        if last == "path" and isinstance(value, str):
            return os.path.normpath(base / value)
        return value
    tree: dict[str, Any] = {}
    _apply_overrides(tree, {key: copy.deepcopy(value)}, origin="stage override")
    _absolutize(tree, base)
    return _get(tree, tuple(parts))


def _get(tree: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=c` -> ("a.b", c) with c parsed as YAML (so `1e-6`, `true`, `[1,2]` work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return key.strip(), value


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _load_yaml_tree(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"extends cycle: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise ConfigError(f"{path}: extends must be a file name, got {base_name!r}")
    base = _load_yaml_tree(path.parent / base_name, seen=(*seen, path))
    return _deep_merge(base, data)


def _deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any], origin: str) -> None:
    """Set each dotted key (`a.b.c`; `name[i]` steps into item i of a list) to its value."""
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = data
        for depth, part in enumerate(parts):
            where = ".".join(parts[: depth + 1])
            if not isinstance(node, dict):
                raise ConfigError(f"{origin}: override {dotted}: {where} is not a section")
            key, index = _key_index(part)
            last = depth == len(parts) - 1
            if index is None:
                if last:
                    node[key] = value
                    break
                child = node.get(key)
                if child is None:
                    child = node[key] = {}
            else:
                items = node.get(key)
                if not isinstance(items, list) or not -len(items) <= index < len(items):
                    size = len(items) if isinstance(items, list) else "no"
                    raise ConfigError(
                        f"{origin}: override {dotted}: {key} has {size} items, no [{index}]"
                    )
                if last:
                    items[index] = value
                    break
                child = items[index]
            node = child


_INDEXED = re.compile(r"^([A-Za-z_][\w-]*)\[(-?\d+)\]$")


def _key_index(part: str) -> tuple[str, int | None]:
    """`name[3]` -> ("name", 3); `name` -> ("name", None)."""
    match = _INDEXED.match(part)
    return (match.group(1), int(match.group(2))) if match else (part, None)


def _validate(data: dict[str, Any], origin: str) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None


def format_validation_error(exc: ValidationError, origin: str) -> str:
    """One line per problem, each naming the dotted field path."""
    lines = [f"invalid config {origin}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"  {loc}: {err['msg']}{shown}")
    return "\n".join(lines)
