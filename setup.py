"""Build hook: the wheel carries the repository's top-level ``resources/`` (icons, demo models) as
``workbench/resources``, where the app looks for them when installed (see ``workbench.gui.dialogs`` and
``workbench.core.tryatask``). Editable installs and the source tree read ``resources/`` in place.

Everything else about the package is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RESOURCES = Path(__file__).resolve().parent / "resources"
SHIPPED = ("icon.svg", "icon-32.png", "icon-64.png", "icon-256.png", "demo")  # screenshots stay in the repo


class BuildPyWithResources(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "workbench" / "resources"
        target.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED:
            source = RESOURCES / name
            if source.is_dir():
                shutil.copytree(source, target / name, dirs_exist_ok=True)
            elif source.exists():
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildPyWithResources})
