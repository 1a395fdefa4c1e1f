"""What happens when: the execution modes. Each registers a :class:`Mode` in ``LOOPS`` whose ``build(cfg, topo,
groups, setup, loaders)`` returns this rank's step strategy, which the one trainer (trainer.py) drives:
``schedules/build.py`` (sequential, e2e, pipeline: a stage loop over links) and ``schedules/e2e_parallel.py``
(ddp, gpipe, 1f1b)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipelocal.registry import Registry


@dataclass(frozen=True)
class Mode:
    """An execution mode (DESIGN §2): how to build a rank's strategy, and what the mode is."""

    build: Callable
    multi_process: bool  # started by torchrun, one process per stage (or replica)
    end_to_end: bool  # plain backprop: method e2e, no guidance
    data_parallel: bool = False  # every process a replica of the whole net (the topology's dp = world size)


LOOPS: Registry[Mode] = Registry("mode")
