"""What happens when: the execution modes. Each registers a :class:`Mode` in ``MODES``: ``build(cfg, topo, groups,
setup, loaders)`` returns this rank's step strategy, which the one trainer (trainer.py) drives, and its traits
tell the config and the job what the mode is. schedules/build.py registers sequential, e2e and pipeline (a stage
loop over links); schedules/e2e_parallel.py ddp, gpipe and 1f1b. Mode names come from here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipelocal.options import MODE_TRAITS, ModeTraits
from pipelocal.registry import Registry


@dataclass(frozen=True)
class Mode:
    """An execution mode (docs/design.md#modes): how to build a rank's strategy, and what the mode is."""

    build: Callable
    traits: ModeTraits


class ModeRegistry(Registry):
    """Mode name -> :class:`Mode`; registering also tells the config (options.py) the mode's name and traits."""

    def register(self, name: str):
        add = super().register(name)

        def add_mode(mode: Mode) -> Mode:
            add(mode)
            MODE_TRAITS[name] = mode.traits
            return mode

        return add_mode


MODES: ModeRegistry = ModeRegistry("mode")
