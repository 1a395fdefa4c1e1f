"""The job configuration from text: YAML files and ``--section.key=value`` overrides into the schema (config.py),
cast to each field's type, unknown keys named with the closest known one; and back out (dict, YAML).

Precedence is CLI > YAML > defaults. ``help_text`` is cli.py's (kept here for the callers that load configs).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pipelocal.config import JobConfig
from pipelocal.options import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that 1e-3 and 5E4 are numbers (YAML 1.1 wants 1.0e-3): the values
    people type for learning rates, in a file or on the command line."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


def read_yaml(text: str) -> Any:
    """Parse YAML text as config values (scientific notation as numbers)."""
    return yaml.load(text, Loader=_Loader)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Defaults, then the YAML file, then ``--section.key=value`` overrides; validated."""
    cfg = JobConfig()
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ConfigError(f"config file {path}: {err.strerror} (check the --config path)") from err
        try:
            values = read_yaml(text) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"config file {path}{where}: YAML syntax error: {problem}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(values).__name__}")
        _merge(cfg, values, prefix="")
    for item in overrides or []:
        key, value = _split_override(item)
        set_key(cfg, key, read_yaml(value) if value != "" else None)
    return cfg.validate()


def set_key(cfg: JobConfig, dotted: str, value: Any) -> None:
    """Set ``section.key`` (or a top-level key) on ``cfg``, casting and checking the name."""
    *parents, leaf = dotted.split(".")
    node, prefix = cfg, ""
    for part in parents:
        node = getattr(node, _known(node, part, prefix))
        prefix += part + "."
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"'{prefix.rstrip('.')}' is a value, not a section")
    _set_on(node, leaf, value, prefix)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: JobConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def help_text(cfg: JobConfig | None = None, width: int = 100) -> str:
    """Every key with its value in ``cfg`` (default: the dataclass defaults), choices and help (cli.py's)."""
    from pipelocal.cli import help_text as text  # cli.py imports this module

    return text(cfg, width)


def _merge(node: Any, values: dict, prefix: str) -> None:
    for key, value in values.items():
        _set_on(node, key, value, prefix)


def _set_on(node: Any, key: str, value: Any, prefix: str) -> None:
    name = _known(node, key, prefix)
    current = getattr(node, name)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"'{prefix}{name}' is a section; give it a mapping, got {value!r}")
        _merge(current, value, f"{prefix}{name}.")
    else:
        setattr(node, name, _cast(value, typing.get_type_hints(type(node))[name], f"{prefix}{name}"))


def _known(node: Any, key: str, prefix: str) -> str:
    names = [f.name for f in dataclasses.fields(node)]
    if key in names:
        return key
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
    where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
    raise ConfigError(f"unknown key '{prefix}{key}'{hint} (keys of {where}: {', '.join(names)})")


def _split_override(item: str) -> tuple[str, str]:
    if not item.startswith("--") or "=" not in item:
        raise ConfigError(f"override '{item}' must look like --section.key=value")
    key, value = item[2:].split("=", 1)
    return key, value


def _cast(value: Any, hint: Any, key: str) -> Any:
    """Cast a YAML value to a field's annotated type, or raise naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _cast(value, inner[0], key)
        for hint_i in inner:  # int | str: the first type that takes the value (2 stays a number)
            try:
                return _cast(value, hint_i, key)
            except ConfigError:
                pass
        kinds = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
        names = " or ".join(kinds.get(h, getattr(h, "__name__", str(h))) for h in inner)
        raise ConfigError(f"'{key}' needs {names}, got {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"'{key}' needs a list, got {value!r}")
        return [_cast(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' needs true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"'{key}' needs an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"'{key}' needs a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if value is False:  # YAML 1.1 reads a bare off (no, false) as False: the choice "off" of a string key
            return "off"
        raise ConfigError(f"'{key}' needs a string, got {value!r}")
    return value
