"""Methods: one file each, registered by name. A method builds aux heads; it never sends tensors."""

from pipelocal.methods import auglocal, dgl, e2e, greedy, infopro, mlaan  # noqa: F401  (registration)
from pipelocal.methods.base import METHODS, CrossEntropyHead, Head, LocalMethod, NetInfo

__all__ = ["METHODS", "CrossEntropyHead", "Head", "LocalMethod", "NetInfo"]
