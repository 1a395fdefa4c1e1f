"""pipelocal: locally supervised learning as a pipeline of processes."""

__version__ = "0.1.0"

# Registering the methods and modes fills the config's tables (options.py), so any `import pipelocal.*` sees them.
from pipelocal import methods  # noqa: E402, F401
from pipelocal.schedules import build, e2e_parallel, pipelining  # noqa: E402, F401


def train(config=None, overrides=None, model=None, data=None):
    """Run a job from Python and return its summary: see :func:`pipelocal.api.train`."""
    from pipelocal.api import train as run

    return run(config, overrides, model, data)
