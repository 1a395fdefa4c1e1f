"""Build hook: ship configs/ inside the package as pipelocal/configs, so a non-editable install has them.

The checkout keeps configs/ at the top (tests, benchmarks, launch/ scripts and docs cite configs/... paths);
pipelocal.configs finds it there in a checkout or an editable install, and in the package once installed.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's configs/ directly
        target = Path(self.build_lib) / "pipelocal" / "configs"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(Path(__file__).parent / "configs", target, ignore=shutil.ignore_patterns("*.pyc"))


setup(cmdclass={"build_py": BuildWithConfigs})
