"""Typed configs: dataclasses filled from a preset YAML, then from CLI overrides.

Each stage declares its config as (nested) dataclasses whose defaults follow the paper. A preset
is `abaw_cli/configs/<stage>/<preset>.yaml` and only lists what differs from those defaults.
The resolved config is dumped into the run folder, so a run can always be read back.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from abaw_cli.atomic import atomic_write_text

T = TypeVar("T")
CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A preset or override names a key or value that the config does not have."""


def available_presets(stage: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / stage).glob("*.yaml"))


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _nested_dataclass(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build `cls` from a plain dict, refusing keys the dataclass does not declare."""
    types_ = _field_types(cls)
    unknown = set(data) - set(types_)
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)} in {where or cls.__name__}; known: {sorted(types_)}")
    kwargs = {}
    for name, value in data.items():
        sub = _nested_dataclass(types_[name])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{where}.{name}" if where else name)
        elif isinstance(value, list) and typing.get_origin(types_[name]) is tuple:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


def load_config(cls: type[T], stage: str, preset: str, overrides: dict[str, Any] | None = None) -> T:
    """Defaults of `cls` <- `configs/<stage>/<preset>.yaml` <- overrides (dotted keys; None = keep)."""
    path = CONFIG_DIR / stage / f"{preset}.yaml"
    if not path.exists():
        raise ConfigError(f"no preset {preset!r} for {stage}; available: {', '.join(available_presets(stage)) or 'none'}")
    data = to_dict(cls())
    data = _merge(data, yaml.safe_load(path.read_text()) or {})
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
    return from_dict(cls, data, f"{path.name}")


def load_run_config(
    cls: type[T], stage: str, preset: str, run_dir: Path, resume: bool, overrides: dict[str, Any] | None = None
) -> T:
    """A training stage's config. A new run: `load_config`. On --resume of a run folder that has its
    `config.yaml`: that file (the run's own settings, whatever the preset says now) <- overrides, so
    a resumed run continues with what it started with."""
    saved = Path(run_dir) / "config.yaml"
    if not (resume and saved.exists()):
        return load_config(cls, stage, preset, overrides)
    data = yaml.safe_load(saved.read_text()) or {}
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
    return from_dict(cls, data, str(saved))


def dump_config(cfg: Any, path: Path) -> None:
    """Write the resolved config as YAML (atomically: a reader never sees half a file)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
