"""Where ``--config`` finds its YAML: a filesystem path first, then a config shipped with the package.

A wheel carries the project's configs/ as ``pipelocal/configs`` (setup.py's build hook); a checkout or an
editable install reads the checkout's configs/. So ``--config fmnist/infopro_k4.yaml`` (a packaged name) and the
default job work from any folder, installed or not.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from pipelocal.options import ConfigError

_HERE = Path(__file__).resolve().parent
DEFAULT_NAME = "default.yaml"


def packaged_dir() -> Path | None:
    """The folder of shipped configs: the package's own (installed), else the checkout's configs/."""
    if (_HERE / "configs" / DEFAULT_NAME).is_file():
        return _HERE / "configs"
    checkout = _HERE.parent
    # Only a pipelocal checkout: site-packages/configs (some other package's) must not stand in for ours.
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs" / DEFAULT_NAME).is_file():
        return checkout / "configs"
    return None


def packaged_names() -> list[str]:
    """Every shipped config as the name ``--config`` takes (``fmnist/infopro_k4.yaml``)."""
    root = packaged_dir()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml")) if root else []


def resolve_config(arg: str | Path | None) -> Path:
    """``arg`` as a path if that file exists, else as a packaged name (``configs/`` prefix and ``.yaml``
    optional); None: the default job (default.yaml). Raises ConfigError naming what was tried."""
    if arg is None:
        root = packaged_dir()
        if root is None:
            raise ConfigError(
                f"no {DEFAULT_NAME} in this install (looked in {_HERE / 'configs'}); reinstall pipelocal, or give "
                "--config PATH"
            )
        return root / DEFAULT_NAME
    path = Path(arg).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"--config {arg} is a folder; give a YAML file (e.g. --config fmnist/infopro_k4.yaml)")
    root = packaged_dir()
    name = path.as_posix().removeprefix("./").removeprefix("configs/")
    for candidate in (name, name + ".yaml"):
        if root is not None and (root / candidate).is_file():
            return root / candidate
    names = packaged_names()
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f" ({len(names)} packaged: {', '.join(names[:3])}, ...)"
    raise ConfigError(f"--config {arg}: no such file, nor a packaged config name{hint}")
