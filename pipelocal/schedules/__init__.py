"""What happens when. One-process modes run schedules/sequential.py from trainer.py; every multi-process
mode registers a loop builder in ``LOOPS``: ``builder(cfg, topo, groups, setup, loaders) -> (loop, stage)``,
where the loop has ``plan``, ``train_epoch``, ``evaluate``, ``waits``, ``stop``, ``checkpoint`` and ``on_step``."""

from pipelocal.registry import Registry

LOOPS: Registry = Registry("multi-process mode")
