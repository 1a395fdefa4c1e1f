"""pipelocal: locally supervised learning as a pipeline of processes."""

__version__ = "0.1.0"

# Registering the methods fills the config's method section (options.py), so any `import pipelocal.*` sees it.
from pipelocal import methods  # noqa: E402, F401
