"""setuptools hook: ship the training configs inside the wheel.

The top-level ``pipelines/*.yaml`` are the one source edited in a checkout; at build
time (wheel, sdist-to-wheel, ``pip install .``) they are copied into the built
package as ``cxr_tf/pipelines/``, where ``cxr_tf.training.config`` looks first.
Everything else is declared in ``setup.cfg``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class build_py_with_pipelines(build_py):
    """``build_py`` that also copies ``pipelines/*.yaml`` to ``<build>/cxr_tf/pipelines/``."""

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's pipelines/ directly
            return
        target = Path(self.build_lib) / "cxr_tf" / "pipelines"
        target.mkdir(parents=True, exist_ok=True)
        sources = sorted((ROOT / "pipelines").glob("*.yaml"))
        if not sources:
            raise RuntimeError(f"{ROOT / 'pipelines'} holds no *.yaml: the wheel would ship no training configs")
        for source in sources:
            shutil.copy2(source, target / source.name)


setup(cmdclass={"build_py": build_py_with_pipelines})
