"""pipelocal: locally supervised learning as a pipeline of processes."""

__version__ = "0.1.0"
