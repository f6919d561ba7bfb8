"""The first-run install, in one place for the panel and the Python console.

    plan = dependencies.plan_install()          # what is missing (nothing imported, nothing changed)
    check(plan)                                 # SegmentationError if nothing can be installed
    op = InstallOperation(plan)                 # PyTorch, then the engine's packages, in the background
    ...poll...                                  # op.result["restart"]: packages Slicer must restart for

PyTorch is installed as the PyTorch extension installs it (light-the-torch picks the
build for this machine's GPU driver), but as background processes the panel follows
with progress and Cancel, not a blocking call. Slicer must restart only when a package
it had already imported changed (torch included): `restart_packages()`.
"""
import importlib.util
import shutil
import sys
import tempfile

from SegmentationLogic.errors import SegmentationError

from . import dependencies
from .operation import Steps
from .runner import ProcessRun, python_executable

LIGHT_THE_TORCH = "light-the-torch>=0.5"  # what the PyTorch extension installs for the same job


def check(plan):
    """Raise when the plan only has conflicts: nothing can be installed that would help."""
    if plan.conflicts and not (plan.pip_packages or plan.needs_torch):
        raise SegmentationError("The Python packages in Slicer do not fit the segmentation engine:\n" + plan.summary(),
                                "Use a Slicer version supported by this extension (5.10, 5.12 or the preview).")


def torch_commands(requirement, python=None, have_light_the_torch=None):
    """pip commands that install PyTorch for this machine (CUDA build matching the driver, else CPU)."""
    python = python or python_executable()
    if have_light_the_torch is None:
        have_light_the_torch = importlib.util.find_spec("light_the_torch") is not None
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    commands = [] if have_light_the_torch else [pip + [LIGHT_THE_TORCH]]
    return commands + [[python, "-m", "light_the_torch", "install", requirement]]


def restart_packages(plan, imported_modules=None):
    """Packages this plan changes that this Slicer session has already imported (restart needed)."""
    imported_modules = sys.modules if imported_modules is None else imported_modules
    names = list(plan.restart_packages)
    if plan.needs_torch and "torch" in imported_modules and "torch" not in names:
        names.append("torch")
    return names


class InstallOperation(Steps):
    """Install what `plan` lists, in the background; result["restart"]: see restart_packages()."""

    def __init__(self, plan, python=None, env=None, imported_modules=None):
        self.plan, self.imported_modules = plan, imported_modules
        self.workdir = tempfile.mkdtemp(prefix="TotalSegmentator-install-")  # the pip constraints file
        steps = []
        if plan.needs_torch:
            for argv in torch_commands(plan.torch_requirement, python):
                steps.append(lambda argv=argv: ProcessRun(argv, env=env, description="Installing PyTorch: "
                                                          + " ".join(argv[-2:]), diagnoser=_pip_diagnosis))
        steps.append(lambda: dependencies.install(plan, self.workdir, python=python, env=env))
        super().__init__(steps, "Installing Python packages")

    def _finish(self, outcome, result=None, error=None):
        shutil.rmtree(self.workdir, ignore_errors=True)
        if outcome == "succeeded":
            result = {**(result or {}), "restart": restart_packages(self.plan, self.imported_modules)}
        super()._finish(outcome, result=result, error=error)


def _pip_diagnosis(returncode, process):
    return dependencies.diagnose_pip(returncode, process.text_tail())
