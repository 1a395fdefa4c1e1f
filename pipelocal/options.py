"""Config building blocks shared by config.py and what it configures: the error, fields, the `method` section.

Each method declares its knobs in a ``Config`` dataclass beside its code (methods/infopro.py: ``InfoProConfig``).
Registering the method (``@METHODS.register``, run when ``import pipelocal`` imports ``pipelocal.methods``)
calls :func:`add_method_options`, which records the class in ``METHOD_OPTIONS``. :func:`method_config` builds
the job's ``method`` section from that table as one flat dataclass, ``name`` plus every method's knobs, so
YAML and the CLI keep flat ``method.<key>`` keys, unknown keys fail at load and ``cfg.method.<knob>`` reads as
before. A method takes its own ``Config`` out of the section and checks it when built (:func:`pick_knobs`);
config.py checks the chosen method's knobs at load through the same table, so it never imports the methods.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and the fix."""


def option(default: Any, help: str, choices: Collection[str] | None = None):
    """A config field with its help text and (optionally) the values it accepts."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def check_choices(node: Any, prefix: str) -> None:
    """Raise for any field (nested sections included) whose value is not among its ``choices``."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            check_choices(value, f"{prefix}{f.name}.")
        elif f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise ConfigError(
                f"{prefix}{f.name}={value!r} is not allowed; choose one of {', '.join(f.metadata['choices'])}"
            )


def pick_knobs(knobs: type | None, section: Any) -> Any:
    """A method's own ``Config`` (``knobs``) filled from the flat ``method`` section, checked; None without knobs."""
    if knobs is None:
        return None
    picked = knobs(**{f.name: getattr(section, f.name) for f in dataclasses.fields(knobs)})
    check_choices(picked, "method.")
    picked.validate()
    return picked


@dataclass
class MethodConfig:
    """The job's ``method`` section: the method's name; :func:`method_config` adds every method's knobs."""

    name: str = option("infopro", "local learning method (see `pipelocal.methods`)")

    def __reduce__(self):
        # The flat class is assembled at run time and has no importable name: pickle rebuilds it by value.
        return (method_config, (dataclasses.asdict(self),))


@dataclass(frozen=True)
class MethodOptions:
    """What the job config knows of a registered method."""

    knobs: type | None  # the method's Config dataclass (with validate()), or None when it has no knobs
    cross_module: bool  # some gradient crosses a module boundary (a cascade, end to end): replay cannot serve it

    def check(self, section: Any) -> None:
        """Check this method's knobs in the flat ``method`` section, as building the method would."""
        pick_knobs(self.knobs, section)


METHOD_OPTIONS: dict[str, MethodOptions] = {}  # method name -> options; filled by methods/base.py's registry


def add_method_options(name: str, knobs: type | None, cross_module: bool) -> None:
    """Record method ``name``'s knobs; they become ``method.<knob>`` keys, so knob names must be unique."""
    taken = {"name": "the section", **{k: n for n, m in METHOD_OPTIONS.items() for k in _knob_names(m.knobs)}}
    for key in _knob_names(knobs):
        if key in taken:
            raise KeyError(f"method '{name}' declares knob '{key}', which {taken[key]} already has (keys are flat)")
    METHOD_OPTIONS[name] = MethodOptions(knobs, cross_module)


def method_options(name: str) -> MethodOptions:
    """The registered method ``name``, or a ConfigError listing the registered ones."""
    if name not in METHOD_OPTIONS:
        raise ConfigError(f"method.name='{name}' is unknown; registered: {', '.join(sorted(METHOD_OPTIONS))}")
    return METHOD_OPTIONS[name]


def method_config(values: dict | None = None) -> MethodConfig:
    """A ``method`` section with every registered method's knobs at their defaults (or ``values``)."""
    return _section_class(tuple(sorted(METHOD_OPTIONS)))(**(values or {}))


@functools.cache
def _section_class(names: tuple[str, ...]) -> type:
    # Cached per set of registered methods: every JobConfig() builds a section, and help_text() many.
    fields = []
    for name in names:
        knobs = METHOD_OPTIONS[name].knobs
        if knobs is not None:
            hints = typing.get_type_hints(knobs)  # real types, since _cast reads them from the flat class
            fields += [(f.name, hints[f.name], _with_owner(f, name)) for f in dataclasses.fields(knobs)]
    section = dataclasses.make_dataclass("MethodConfig", fields, bases=(MethodConfig,))
    section.__module__ = __name__  # Python 3.11's make_dataclass leaves it unset
    return section


def _with_owner(f: dataclasses.Field, owner: str) -> dataclasses.Field:
    """A copy of a knob's field whose help says which method reads it (the section lists them all)."""
    meta = {**f.metadata, "help": f"{owner}: {f.metadata.get('help', '')}"}
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=f.default_factory, metadata=meta)
    return field(default=f.default, metadata=meta)


def _knob_names(knobs: type | None) -> list[str]:
    return [f.name for f in dataclasses.fields(knobs)] if knobs is not None else []


@dataclass(frozen=True)
class ModeTraits:
    """What the job config and the net builder know of an execution mode (schedules/ registers each one)."""

    multi_process: bool  # started by torchrun, one process per stage (or replica)
    end_to_end: bool  # plain backprop: method e2e, no guidance
    one_module: bool = False  # the whole net is one module in every process (e2e, ddp)
    data_parallel: bool = False  # every process a replica of the whole net (the topology's dp = world size)
    microbatched: bool = False  # a stage runs the batch as pipeline.microbatches microbatches (GPipe, 1F1B)
    check: Callable[[Any], None] | None = None  # the mode's own rules on the job config (raises ConfigError)


MODE_TRAITS: dict[str, ModeTraits] = {}  # mode name -> traits; filled by schedules' MODES registry


def mode_traits(name: str) -> ModeTraits:
    """The registered mode ``name``, or a ConfigError listing the registered ones."""
    if name not in MODE_TRAITS:
        raise ConfigError(f"mode='{name}' is unknown; registered: {', '.join(sorted(MODE_TRAITS))}")
    return MODE_TRAITS[name]
