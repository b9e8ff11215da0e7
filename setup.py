"""The build is in pyproject.toml; this only adds ``worldlab_gymnasium.pth`` to the installed files,
beside the packages in site-packages, so that Gymnasium finds the lab's ids on a fresh interpreter
(see worldlab_gymnasium.py). setuptools has no pyproject setting for a file at the top of
site-packages, so build_py copies it there: into the wheel's root, or, for ``pip install -e .``,
into the editable wheel's root."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "worldlab_gymnasium.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        target = self.build_lib
        if getattr(self, "editable_mode", False):  # the editable wheel's root is install's install_lib
            target = self.get_finalized_command("install").install_lib
        self.copy_file(PTH, os.path.join(target, PTH), preserve_mode=False)


setup(cmdclass={"build_py": BuildPyWithPth})
