"""Build hook (everything else is in pyproject.toml): the wheel carries templates/ as mailmag/templates.

The templates stay in the repository's top-level templates/ folder, where a secretariat edits
them; an installed mailmag (pip install mailmag-*.whl, pipx) finds its copy inside the package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TEMPLATES = Path(__file__).resolve().parent / "templates"


class BuildWithTemplates(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install reads templates/ where it is
            shutil.copytree(TEMPLATES, Path(self.build_lib) / "mailmag" / "templates", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithTemplates})
