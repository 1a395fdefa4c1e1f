"""A stage's working parts: local modules with their heads and optimizers."""

from pipelocal.runtime.local_net import LocalModule, LocalNet, build_local_net

__all__ = ["LocalModule", "LocalNet", "build_local_net"]
