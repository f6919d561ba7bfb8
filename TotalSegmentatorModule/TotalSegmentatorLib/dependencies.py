"""First-run Python dependencies for the engine, installed into Slicer's Python.

1. `plan_install()` works out what is missing or at the wrong version (from the
   installed distributions' metadata, nothing is imported) and returns an
   `InstallPlan` whose `summary()` the module shows for confirmation.
2. `constraints_text()` pins every package Slicer itself ships (numpy, SimpleITK, vtk,
   requests, ...) and torch at the versions installed now, so pip can never replace
   them while resolving the engine's requirements: a conflict fails the install with a
   clear message instead of breaking Slicer. Packages present without pip metadata
   (Slicer's built-in VTK) are constrained to no version at all, so pip cannot
   install a second copy.
3. `install()` runs pip in the background (one resolver pass, pinned versions) and
   returns a Run to poll, like an engine run.
4. torch comes from the PyTorch extension (PyTorchUtils), which picks the build that
   matches the GPU driver; `install_torch()` delegates to it.
5. `InstallPlan.restart_required` says whether a package that this Slicer session has
   already imported will change: then Slicer must be restarted before it is used.
"""
import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass, field

try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # an older Slicer without `packaging`: pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import InvalidVersion, Version

# What the engine needs beyond torch. Exact pins for the packages we bring (the versions
# the test suite ran with, see constraints.txt); ranges for those Slicer ships, which
# are never replaced.
REQUIREMENTS = (
    "nnunetv2==2.8.1",
    "nibabel==5.4.2",
    "scikit-image==0.26.0",
    "scipy>=1.9",
    "numpy>=1.24",
    "SimpleITK>=2.2",
    "requests>=2.28",
    "vtk>=9.2",
)
TORCH_REQUIREMENT = "torch>=2.1.2"  # nnunetv2 2.8 needs at least this

# Shipped with Slicer (or owned by the PyTorch extension): pinned at what is installed.
PROTECTED = ("numpy", "SimpleITK", "vtk", "scipy", "requests", "urllib3", "certifi", "charset-normalizer", "idna",
             "packaging", "pip", "setuptools", "wheel", "pydicom", "Pillow", "torch", "torchvision", "torchaudio",
             "psutil", "lxml")

# Distribution name -> module name where they differ (for the "already imported" check).
IMPORT_NAMES = {"scikit-image": "skimage", "SimpleITK": "SimpleITK", "Pillow": "PIL", "pydicom": "pydicom"}
BUILTIN = "built-in"  # importable, but no pip metadata (Slicer's VTK)


def installed_version(name):
    """Installed version of a distribution, BUILTIN if only importable, None if absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    module = IMPORT_NAMES.get(name, name.replace("-", "_"))
    try:
        return BUILTIN if importlib.util.find_spec(module) is not None else None
    except (ImportError, ValueError):
        return None


def import_name(dist):
    return IMPORT_NAMES.get(dist, dist.replace("-", "_"))


@dataclass
class Action:
    name: str
    requirement: str  # e.g. "nnunetv2==2.8.1"
    installed: str = None
    action: str = "keep"  # keep | install | upgrade | downgrade | reinstall | conflict | torch
    reason: str = ""

    def describe(self):
        have = f" (installed: {self.installed})" if self.installed else ""
        return {
            "install": f"install {self.requirement}",
            "upgrade": f"upgrade {self.name} {self.installed} -> {self.requirement}",
            "downgrade": f"downgrade {self.name} {self.installed} -> {self.requirement}",
            "reinstall": f"reinstall {self.requirement}{have}",
            "torch": f"install PyTorch ({self.requirement}) through the PyTorch extension{have}",
            "conflict": f"CONFLICT {self.name}: {self.reason}",
            "keep": f"keep {self.name} {self.installed}",
        }[self.action]


@dataclass
class InstallPlan:
    actions: list = field(default_factory=list)
    constraints: dict = field(default_factory=dict)  # name -> pip constraint line
    restart_required: bool = False
    restart_packages: list = field(default_factory=list)

    def _of(self, *kinds):
        return [a for a in self.actions if a.action in kinds]

    @property
    def pip_packages(self):
        """Requirements pip must see: changes, plus every pinned package so one resolver pass checks the set."""
        if not self._of("install", "upgrade", "downgrade", "reinstall"):
            return []
        return [a.requirement for a in self.actions if a.action != "torch" and "==" in a.requirement] + \
            [a.requirement for a in self._of("install", "upgrade", "downgrade") if "==" not in a.requirement]

    @property
    def reinstall_packages(self):
        return [a.requirement for a in self._of("reinstall")]

    @property
    def needs_torch(self):
        return bool(self._of("torch"))

    @property
    def torch_requirement(self):
        actions = self._of("torch")
        return actions[0].requirement if actions else None

    @property
    def conflicts(self):
        return self._of("conflict")

    @property
    def nothing_to_do(self):
        return not self._of("install", "upgrade", "downgrade", "reinstall", "torch", "conflict")

    def summary(self):
        """Text for the confirmation dialog."""
        if self.nothing_to_do:
            return "All Python packages the segmentation engine needs are installed."
        lines = []
        if self.conflicts:
            lines.append("These installed packages do not fit the engine and will NOT be changed:")
            lines += [f"  - {a.describe()}" for a in self.conflicts]
        changes = self._of("torch", "install", "upgrade", "downgrade", "reinstall")
        if changes:
            lines.append("The following will be installed into Slicer's Python (with their dependencies):")
            lines += [f"  - {a.describe()}" for a in changes]
            protected = sorted(k for k, v in self.constraints.items() if "<0" not in v)
            if protected:
                lines.append("Packages Slicer already has stay as they are: " + ", ".join(protected) + ".")
        if self.restart_required:
            lines.append("Slicer must be restarted afterwards (already loaded: "
                         + ", ".join(self.restart_packages) + ").")
        return "\n".join(lines)


def _parse_version(text):
    try:
        return Version(text)
    except (InvalidVersion, TypeError):
        return None


def plan_install(requirements=REQUIREMENTS, torch_requirement=TORCH_REQUIREMENT, protected=PROTECTED,
                 version_of=installed_version, imported_modules=None, reinstall=False):
    """Compare what is installed with what the engine needs; nothing is changed."""
    imported_modules = sys.modules if imported_modules is None else imported_modules
    plan = InstallPlan()
    protected_names = {canonicalize_name(p) for p in protected}
    for text in requirements:
        req = Requirement(text)
        have = version_of(req.name)
        action = Action(req.name, str(req), have)
        is_protected = canonicalize_name(req.name) in protected_names
        if have is None:
            action.action = "install"
        elif have == BUILTIN:
            action.action = "keep"
        elif not req.specifier.contains(have, prereleases=True):
            if is_protected:
                action.action, action.reason = "conflict", (
                    f"the engine needs {req.specifier}, Slicer has {have}; use a Slicer version that ships "
                    f"a compatible {req.name}")
            else:
                pinned = _pinned_version(req.specifier)
                action.action = "downgrade" if pinned and _parse_version(have) and _parse_version(have) > pinned \
                    else "upgrade"
        elif reinstall and not is_protected:
            action.action = "reinstall"
        plan.actions.append(action)

    torch_req = Requirement(torch_requirement)
    have = version_of("torch")
    base = have.split("+")[0] if have and have != BUILTIN else have
    if have is None or (have != BUILTIN and not torch_req.specifier.contains(base, prereleases=True)):
        plan.actions.append(Action("torch", str(torch_req), have, "torch"))

    for name in protected:
        have = version_of(name)
        if have == BUILTIN:
            plan.constraints[name] = f"{name}<0"  # importable without pip metadata: never let pip add a copy
        elif have is not None:
            plan.constraints[name] = f"{name}=={have}"

    changing = [a.name for a in plan.actions if a.action in ("upgrade", "downgrade", "reinstall", "torch")
                and a.installed]
    plan.restart_packages = sorted(n for n in changing if import_name(n) in imported_modules)
    plan.restart_required = bool(plan.restart_packages)
    return plan


def _pinned_version(specifier):
    for spec in SpecifierSet(str(specifier)):
        if spec.operator in ("==", "==="):
            return _parse_version(spec.version)
    return None


def constraints_text(plan):
    header = ("# Generated by the TotalSegmentator module: packages Slicer ships (and torch, owned by the PyTorch\n"
              "# extension) stay at the installed version while the engine's requirements are installed.\n")
    return header + "".join(f"{line}\n" for line in plan.constraints.values())


def pip_commands(plan, python, constraints_file, pip_args=()):
    """The pip invocations that carry out `plan` (empty when pip has nothing to do)."""
    base = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-c", str(constraints_file)]
    commands = []
    if plan.reinstall_packages:
        commands.append(base + ["--force-reinstall", "--no-deps", *plan.reinstall_packages, *pip_args])
    if plan.pip_packages:
        commands.append(base + [*plan.pip_packages, *pip_args])
    return commands


PIP_FAILURES = (
    (r"ResolutionImpossible|conflict is caused by|Cannot install .* because these package versions have conflicting",
     "conflict",
     "The engine's Python packages conflict with packages Slicer ships{detail}.",
     "Nothing was changed. Use a Slicer version supported by this extension, or report the log."),
    (r"No matching distribution found for (\S+)|Could not find a version that satisfies the requirement (\S+)",
     "download",
     "pip could not find a package{detail} (offline, proxy, or no build for this Python version).",
     "Check the internet connection and proxy settings, then use Advanced > Reinstall dependencies."),
    (r"SSLError|CERTIFICATE_VERIFY_FAILED|ConnectionError|Max retries exceeded|Network is unreachable|"
     r"Temporary failure in name resolution",
     "download", "pip could not reach the package index{detail}.",
     "Check the internet connection and proxy settings, then use Advanced > Reinstall dependencies."),
    (r"Permission denied|Access is denied|\[WinError 5\]",
     "permission", "pip may not write into Slicer's Python folder{detail}.",
     "Install Slicer in a folder your user can write to (or run it once as the owner of that folder)."),
    (r"No space left on device", "disk", "The disk is full{detail}.", "Free disk space and try again."),
)


def diagnose_pip(returncode, lines):
    text = "\n".join(lines)
    for pattern, kind, cause, fix in PIP_FAILURES:
        m = re.search(pattern, text)
        if m:
            names = [g for g in m.groups() if g] if m.groups() else []
            detail = f" ({names[0]})" if names else ""
            conflict_lines = [line.strip() for line in lines if " depends on " in line or "requested " in line]
            if kind == "conflict" and conflict_lines:
                detail = ": " + "; ".join(conflict_lines[:4])
            return {"event": "error", "kind": kind, "type": "InstallError", "cause": cause.format(detail=detail),
                    "fix": fix, "returncode": returncode, "details": lines[-20:]}
    last = next((line for line in reversed(lines) if line.strip()), "")
    return {"event": "error", "kind": "install", "type": "InstallError",
            "cause": f"Installing Python packages failed (pip exit code {returncode}): {last}",
            "fix": "See the log; then use Advanced > Reinstall dependencies, or report the log.",
            "returncode": returncode, "details": lines[-20:]}


def install_torch(requirement=TORCH_REQUIREMENT):
    """Install torch through the PyTorch extension (Slicer only); returns the installed version."""
    try:
        import PyTorchUtils
    except ImportError:
        raise RuntimeError("PyTorch is not installed and the PyTorch extension is missing. Install the 'PyTorch' "
                           "extension from the Extensions Manager, restart Slicer, and click Apply again.") from None
    spec = str(Requirement(requirement).specifier)
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=spec)
    if torch is None:
        raise RuntimeError("PyTorch was not installed. Install it in the PyTorch Utils module, then click Apply again.")
    return torch.__version__


def install(plan, workdir, python=None, pip_args=(), env=None):
    """Carry out the pip part of `plan` in the background; returns a Run (poll or wait on it).

    The constraints file is written to `workdir` (the caller removes it). torch is not
    installed here: see `install_torch()`.
    """
    from pathlib import Path

    from .runner import SequenceRun, python_executable

    constraints = Path(workdir) / "constraints.txt"
    constraints.write_text(constraints_text(plan), encoding="utf-8")
    commands = pip_commands(plan, python or python_executable(), constraints, pip_args)
    return SequenceRun(commands, env=env, description="Installing Python packages",
                       diagnoser=lambda rc, process: diagnose_pip(rc, process.text_tail()))


def versions_report(requirements=REQUIREMENTS, version_of=installed_version):
    """[(package, installed version or None)] for the panel: torch and the engine's packages."""
    names = ["torch"] + [Requirement(r).name for r in requirements]
    return [(name, version_of(name)) for name in names]
