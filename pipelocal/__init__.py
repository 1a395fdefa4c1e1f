"""pipelocal: locally supervised learning as a pipeline of processes."""

__version__ = "0.1.0"

# Registering the methods and modes fills the config's tables (options.py), so any `import pipelocal.*` sees them.
from pipelocal import methods  # noqa: E402, F401
from pipelocal.schedules import build, e2e_parallel  # noqa: E402, F401
