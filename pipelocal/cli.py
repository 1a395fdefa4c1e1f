"""The command line: ``--config``, ``--help`` and the dotted overrides, in the forms people type.

``--section.key=value``, ``--section.key value`` and, for a true/false key, a bare ``--section.key`` (true).
Values are YAML with scientific notation read as numbers (config.py's loader). ``--help`` prints every key with
the value this command would run with (the config file and the other overrides applied), its choices and its help.
"""

from __future__ import annotations

import dataclasses
import shutil
import textwrap
import typing
from typing import Any

from pipelocal.config import JobConfig
from pipelocal.config_files import resolve_config
from pipelocal.config_parse import load_config
from pipelocal.options import METHOD_OPTIONS, ConfigError, MethodConfig

USAGE = (
    "usage: pipelocal [--config PATH|NAME] [--section.key=value | --section.key value | --flag] ...\n"
    "       torchrun --standalone --nproc_per_node=P -m pipelocal.run [the same arguments]"
)
DESCRIPTION = (
    "Train a network as K local modules. --config takes a YAML path, or the name of a packaged config "
    "(fmnist/infopro_k4.yaml); without it, the default job (default.yaml). Any key below can be overridden."
)


def parse_command(argv: list[str]) -> tuple[str | None, bool, list[str]]:
    """(the --config argument, whether help was asked, the overrides as ``--key=value``)."""
    config, wants_help, overrides, i = None, False, [], 0
    while i < len(argv):
        item = argv[i]
        i += 1
        if item in ("-h", "--help"):
            wants_help = True
            continue
        if not item.startswith("--") or item == "--":
            raise ConfigError(f"argument '{item}' is not an option; give --section.key=value (or --section.key value)")
        key, eq, value = item[2:].partition("=")
        if not eq:
            if i < len(argv) and not argv[i].startswith("--") and argv[i] not in ("-h",):
                value, i = argv[i], i + 1
            elif key == "config" or not _is_bool(key):
                raise ConfigError(f"--{key} needs a value: --{key}=VALUE or --{key} VALUE")
            else:
                value = "true"  # a bare boolean switches it on
        if key == "config":
            config = value
        else:
            overrides.append(f"--{key}={value}")
    return config, wants_help, overrides


def config_from_argv(argv: list[str]) -> JobConfig:
    """The validated job config of a command line; ``--help`` prints the keys with their values and exits 0."""
    config, wants_help, overrides = parse_command(argv)
    path = resolve_config(config)
    cfg = load_config(path, overrides)
    if wants_help:
        print(help_page(cfg, f"--config {config}" if config else "the default job"))
        raise SystemExit(0)
    return cfg


def help_page(cfg: JobConfig, source: str) -> str:
    width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 140))
    intro = textwrap.fill(DESCRIPTION, width)
    values = f"Values shown: those this command runs with ({source}, with the overrides given)."
    return "\n".join([USAGE, "", intro, "", textwrap.fill(values, width), help_text(cfg, width)])


def help_text(cfg: Any = None, width: int = 100) -> str:
    """Every section and key (nested ones included) with its value in ``cfg`` (default: the dataclass
    defaults), its choices and its help, wrapped to ``width`` columns."""
    cfg = cfg if cfg is not None else JobConfig()
    return "\n".join(_section_lines(cfg, "", width))


def _section_lines(node: Any, prefix: str, width: int) -> list[str]:
    lines, sections = [], []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            sections += ["", f"{prefix}{f.name}:", *_section_lines(value, f"{prefix}{f.name}.", width)]
            continue
        flag = f"  --{prefix}{f.name}={_show(value)}"
        choices = f.metadata.get("choices")
        if isinstance(node, MethodConfig) and f.name == "name":
            choices = METHOD_OPTIONS  # the registered methods (the section is assembled from them)
        choices = sorted(choices) if choices else None
        text = f.metadata.get("help", "") + (f" {{{', '.join(choices)}}}" if choices else "")
        lines.append(flag)
        lines += textwrap.wrap(text, width, initial_indent=" " * 6, subsequent_indent=" " * 6, break_on_hyphens=False)
    return lines + sections  # a section's own keys first, then its subsections (pipeline.slowdown)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def _is_bool(dotted: str) -> bool:
    """Whether ``dotted`` names a true/false key (an unknown key is left to load_config's did-you-mean)."""
    node: Any = JobConfig()
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = getattr(node, part, None)
        if not dataclasses.is_dataclass(node):
            return True  # unknown: pass it on, load_config names the key and the closest one
    hints = typing.get_type_hints(type(node))
    return leaf not in hints or hints[leaf] is bool
