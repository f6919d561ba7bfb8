"""First-run Python dependencies for the engine, installed into Slicer's Python.

Slicer has ONE site-packages for itself and every extension: Slicer's own packages
(numpy, scipy, SimpleITK, vtk, requests, pydicom, ...), torch from the PyTorch extension,
and whatever other extensions installed (the NNUNet extension and the other
TotalSegmentator extension bring nnunetv2 too). So:

1. `plan_install()` compares what is installed (distribution metadata; nothing is
   imported) with `REQUIREMENTS`: a range of versions we accept for each package and
   the version we tested and install when it is missing. An installed version inside
   the range is kept, whoever installed it.
2. Slicer's packages are never replaced: the release's list comes from
   Resources/slicer_bundled_packages.json (read from Slicer's SuperBuild files by
   Testing/tools/make_slicer_bundled_packages.py) for the running Slicer, detected from
   `slicer.app`. They, and torch, are pinned at the installed version; one that does not
   fit is a blocking conflict ("use a supported Slicer"), not a replacement.
3. A package another extension (or the user) installed is never downgraded without
   telling: one newer than our range is kept and listed as a conflict with the reason;
   every other installed package is constrained to >= its installed version, so pip
   cannot downgrade it as a dependency either (it fails, and `diagnose_pip` says which).
   `allow_downgrades=True` (after the user agreed) lifts both.
4. `install()` runs pip in the background (one resolver pass) and returns a Run to poll.
   torch is installed before it by `installation.py`, as the PyTorch extension does it
   (light-the-torch picks the build that matches the GPU driver).
5. `InstallPlan.restart_required`: a package this Slicer session already imported will
   change, so Slicer must restart before it is used.
"""
import importlib.metadata
import importlib.util
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # a Slicer without `packaging`: pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import InvalidVersion, Version

from SegmentationLogic.errors import error_event


@dataclass(frozen=True)
class Need:
    """A package the engine needs: the versions accepted when installed, the one installed when missing."""
    name: str
    accepted: str   # specifier, e.g. ">=2.6.2,<2.9"
    tested: str = None  # the version the test suite runs with (constraints.txt); None: we never install it

    @property
    def requirement(self):
        return f"{self.name}{self.accepted}"

    @property
    def install_requirement(self):
        return f"{self.name}=={self.tested}" if self.tested else self.requirement

    @classmethod
    def parse(cls, text):
        """A Need from a requirement string ("pkg==1.0" installs 1.0; "pkg>=1" accepts any)."""
        if isinstance(text, Need):
            return text
        req = Requirement(text)
        pinned = [s.version for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
        return cls(req.name, str(req.specifier), pinned[0] if pinned else None)


# What the engine needs beyond torch. `accepted`: the versions we run with when another
# extension (or the user) installed them; the lower bounds are the oldest versions the
# engine's inference and vessel tests passed with (nnunetv2 2.6.2 and 2.7.0, nibabel
# 5.2.1, scikit-image 0.24.0, the first with numpy 2 wheels; run by hand on 2026-12-04),
# the upper bound the next release line, not tried yet. `tested`: what the test suite
# runs with (constraints.txt) and what a fresh install gets. The ranges of Slicer's own
# packages are only checked, never acted on.
REQUIREMENTS = (
    Need("nnunetv2", ">=2.6.2,<2.9", "2.8.1"),   # the NNUNet extension and the other TotalSegmentator bring their own
    Need("nibabel", ">=5.2.1,<6", "5.4.2"),
    Need("scikit-image", ">=0.24,<0.27", "0.26.0"),
    Need("numpy", ">=1.24"),            # Slicer's
    Need("scipy", ">=1.9"),             # Slicer's
    Need("SimpleITK", ">=2.2"),         # Slicer's
    Need("requests", ">=2.28"),         # Slicer's
    Need("vtk", ">=9.2"),               # Slicer's
)
# A run on a segmentation server (device "Remote server") needs only what Slicer ships: the
# client is the standard library and requests (SegmentationLogic/server/client.py), the
# result is read with SimpleITK and imported with VTK. No torch, nnU-Net or nibabel.
REMOTE_REQUIREMENTS = (
    Need("requests", ">=2.28"),         # Slicer's
    Need("SimpleITK", ">=2.2"),         # Slicer's
    Need("numpy", ">=1.24"),            # Slicer's
)
# nnunetv2 2.8 requires torch>=2.1.2 and not 2.9.*; the PyTorch extension installs torch.
TORCH_REQUIREMENT = "torch>=2.1.2,!=2.9.*"
TORCH_TESTED = "2.13.0"

# Owned by the PyTorch extension: pinned at the installed version like Slicer's packages.
PYTORCH_OWNED = ("torch", "torchvision", "torchaudio")
# Never changed in any Python that pip runs in.
ALWAYS_PROTECTED = ("pip", "setuptools", "wheel")

# Distribution name -> module name where they differ (for the "already imported" check).
IMPORT_NAMES = {"scikit-image": "skimage", "SimpleITK": "SimpleITK", "Pillow": "PIL", "pydicom": "pydicom"}
BUILTIN = "built-in"  # importable, but no pip metadata (VTK in a Slicer build without its dist-info)
BUNDLED_FILE = "slicer_bundled_packages.json"


# -- what is there ------------------------------------------------------------------------

def installed_distributions():
    """{canonical name: version} of every distribution Python can see (the first one found wins)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return found


def installed_version(name, installed=None):
    """Installed version of a distribution, BUILTIN if only importable, None if absent."""
    installed = installed_distributions() if installed is None else installed
    have = installed.get(canonicalize_name(name))
    if have is not None:
        return have
    try:
        return BUILTIN if importlib.util.find_spec(import_name(name)) is not None else None
    except (ImportError, ValueError):
        return None


def import_name(dist):
    return IMPORT_NAMES.get(dist, dist.replace("-", "_"))


def running_slicer_version():
    """The running Slicer's version ("5.12.3", "5.13.0" for a preview); None outside Slicer."""
    slicer = sys.modules.get("slicer")  # imported by Slicer itself; never import it here
    app = getattr(slicer, "app", None)
    if app is None:
        return None
    text = getattr(app, "applicationVersion", None) or ""  # QCoreApplication property: "5.12.3", "5.13.0-2026-08-21"
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if m:
        return ".".join(g for g in m.groups() if g is not None)
    major, minor = getattr(app, "majorVersion", None), getattr(app, "minorVersion", None)
    return f"{major}.{minor}" if major is not None and minor is not None else None


def _bundled_file():
    here = Path(__file__).resolve().parent
    # Resources/ sits beside the module in Slicer (qt-scripted-modules/) and at the top of a source checkout.
    for base in (here.parent, here.parent.parent):
        candidate = base / "Resources" / BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Resources/{BUNDLED_FILE} not found next to the module; reinstall the extension.")


def load_bundled_releases(path=None):
    return json.loads(Path(path or _bundled_file()).read_text(encoding="utf-8"))["releases"]


def _key(version):
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def bundled_release(slicer_version, releases=None):
    """The release entry for a Slicer version: the same release, else the nearest one known.

    None for None (not in Slicer). A patch release we do not list uses the newest listed
    patch of its line; a newer line than all we know uses the newest (the preview).
    """
    if slicer_version is None:
        return None
    releases = load_bundled_releases() if releases is None else releases
    version = _key(slicer_version)
    same_line = [r for r in releases if _key(r["slicer"])[:2] == version[:2]]
    candidates = same_line or releases
    older = [r for r in candidates if _key(r["slicer"]) <= version]
    return older[-1] if older else candidates[0]


def slicer_packages(slicer_version, releases=None):
    """Canonical names of the packages Slicer ships: for that release, or every release we know."""
    releases = load_bundled_releases() if releases is None else releases
    entry = bundled_release(slicer_version, releases)
    chosen = [entry] if entry else releases
    return {name for r in chosen for name in r["packages"]}


# -- the plan ---------------------------------------------------------------------------

@dataclass
class Action:
    name: str
    requirement: str  # what pip is asked for, e.g. "nnunetv2==2.8.1"
    installed: str = None
    action: str = "keep"  # keep | install | upgrade | downgrade | reinstall | conflict | torch
    reason: str = ""
    accepted: str = ""    # the range we accept
    blocking: bool = False  # a conflict the engine cannot run with

    def describe(self):
        have = f" (installed: {self.installed})" if self.installed else ""
        note = f"; {self.reason}" if self.reason else ""
        return {
            "install": f"install {self.requirement}",
            "upgrade": f"upgrade {self.name} {self.installed} -> {self.requirement}{note}",
            "downgrade": f"downgrade {self.name} {self.installed} -> {self.requirement}{note}",
            "reinstall": f"reinstall {self.requirement}{have}",
            "torch": f"install PyTorch ({self.requirement}) through the PyTorch extension{have}",
            "conflict": f"{self.name} {self.installed}: {self.reason}",
            "keep": f"keep {self.name} {self.installed}",
        }[self.action]


@dataclass
class InstallPlan:
    actions: list = field(default_factory=list)
    constraints: dict = field(default_factory=dict)  # name -> pip constraint line
    restart_required: bool = False
    restart_packages: list = field(default_factory=list)
    slicer_version: str = None
    slicer_release: str = None  # the release whose bundled packages were used ("5.12.3"), None outside Slicer
    requirements: list = field(default_factory=list)  # what pip resolves (every need; changes at the tested version)

    def _of(self, *kinds):
        return [a for a in self.actions if a.action in kinds]

    @property
    def changes(self):
        return self._of("install", "upgrade", "downgrade")

    @property
    def pip_packages(self):
        """Requirements for pip: every need, so one resolver pass checks the whole set (empty: nothing to do)."""
        return list(self.requirements) if self.changes else []

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
        """Installed packages outside our range that the plan leaves as they are (each with its reason)."""
        return self._of("conflict")

    @property
    def blocking_conflicts(self):
        return [a for a in self.conflicts if a.blocking]

    @property
    def kept_conflicts(self):
        return [a for a in self.conflicts if not a.blocking]

    @property
    def nothing_to_do(self):
        """True when the engine can run as things are (a newer package we keep is only a warning)."""
        return not (self._of("install", "upgrade", "downgrade", "reinstall", "torch") or self.blocking_conflicts)

    def warnings(self):
        """Lines to log even when nothing is installed: the packages kept outside the tested range."""
        return [f"{a.describe()}" for a in self.kept_conflicts]

    def summary(self):
        """Text for the confirmation dialog."""
        if self.nothing_to_do and not self.conflicts:
            return "All Python packages the segmentation engine needs are installed."
        lines = []
        if self.blocking_conflicts:
            lines.append("These packages of Slicer do not fit the engine; they are NOT changed:")
            lines += [f"  - {a.describe()}" for a in self.blocking_conflicts]
        if self.kept_conflicts:
            lines.append("These packages are outside the versions this extension is tested with; they are NOT "
                         "changed:")
            lines += [f"  - {a.describe()}" for a in self.kept_conflicts]
        changes = self._of("torch", "install", "upgrade", "downgrade", "reinstall")
        if changes:
            lines.append("The following will be installed into Slicer's Python (with their dependencies):")
            lines += [f"  - {a.describe()}" for a in changes]
            kept = [f"{a.name} {a.installed}" for a in self._of("keep") if a.installed and a.installed != BUILTIN]
            if kept:
                lines.append("Already installed and used as they are: " + ", ".join(kept) + ".")
            lines.append("Packages that Slicer or other extensions installed are not replaced or downgraded.")
        if self.restart_required:
            lines.append("Slicer must be restarted afterwards (already loaded: "
                         + ", ".join(self.restart_packages) + ").")
        return "\n".join(lines)


def _parse_version(text):
    try:
        return Version(text)
    except (InvalidVersion, TypeError):
        return None


def _base(version):
    return version.split("+")[0] if version and version != BUILTIN else version


def _newer_than_range(version, specifier):
    """True if `version` lies above every version the specifier accepts (e.g. 3.0 for >=2.6,<2.9)."""
    v = _parse_version(_base(version))
    uppers = [_parse_version(s.version) for s in SpecifierSet(specifier) if s.operator in ("<", "<=", "==", "~=")]
    return v is not None and any(u is not None and v > u for u in uppers)


def plan_install(requirements=REQUIREMENTS, torch_requirement=TORCH_REQUIREMENT, installed=None,
                 slicer_version=None, imported_modules=None, reinstall=False, allow_downgrades=False,
                 releases=None, remote=False):
    """Compare what is installed with what the engine needs; nothing is changed.

    remote: the plan of a run on a segmentation server (REMOTE_REQUIREMENTS, no torch):
    what Slicer ships, so normally nothing to install, whatever the local engine lacks.

    installed: {name: version} (default: this Python's distributions, and BUILTIN for
    Slicer's packages importable without metadata; given, it is all there is); slicer_version:
    default the running Slicer's (None outside Slicer: every release's packages count as
    Slicer's); allow_downgrades: the user agreed to downgrade packages outside our range.
    """
    if remote:
        requirements, torch_requirement = REMOTE_REQUIREMENTS, None
    imported_modules = sys.modules if imported_modules is None else imported_modules
    probe = installed is None  # look for importable packages without metadata only in this Python
    installed = {canonicalize_name(k): v for k, v in (
        installed_distributions() if installed is None else installed).items()}

    def version_of(name):
        return installed_version(name, installed) if probe else installed.get(canonicalize_name(name))
    slicer_version = running_slicer_version() if slicer_version is None else slicer_version
    releases = load_bundled_releases() if releases is None else releases
    entry = bundled_release(slicer_version, releases)
    plan = InstallPlan(slicer_version=slicer_version, slicer_release=entry["slicer"] if entry else None)
    owner = {n: "Slicer" for n in slicer_packages(slicer_version, releases)}
    owner.update({canonicalize_name(n): "the PyTorch extension" for n in PYTORCH_OWNED})
    owner.update({canonicalize_name(n): "pip" for n in ALWAYS_PROTECTED})
    changing = set()

    for need in map(Need.parse, requirements):
        key = canonicalize_name(need.name)
        have = version_of(need.name)
        action = Action(need.name, need.requirement, have, accepted=need.accepted)
        protected = key in owner
        spec = SpecifierSet(need.accepted)
        if have is None:
            action.action, action.requirement = "install", need.install_requirement
        elif have == BUILTIN or spec.contains(_base(have), prereleases=True):
            action.action = "reinstall" if reinstall and not protected else "keep"
            if action.action == "reinstall":
                action.requirement = f"{need.name}=={have}"
        elif protected:
            action.action, action.blocking = "conflict", True
            action.reason = (f"the engine needs {need.name}{need.accepted} and {owner[key]} provides {have}; "
                             f"it is not replaced (that would break {owner[key]}): use a supported Slicer version")
        elif _newer_than_range(have, need.accepted) and not allow_downgrades:
            action.action = "conflict"
            action.reason = (
                f"newer than the versions this extension is tested with ({need.accepted}, tested {need.tested}). "
                f"It is not part of Slicer: another extension (such as NNUNet) or you installed it, and downgrading it "
                f"to {need.tested} could break that extension, so it is kept and the segmentation uses it as it is")
        else:
            newer = _newer_than_range(have, need.accepted)
            action.action, action.requirement = ("downgrade" if newer else "upgrade"), need.install_requirement
            action.reason = ("outside the tested versions " + need.accepted
                             + ("; you allowed downgrading it" if newer else "")
                             + "; it is not part of Slicer (another extension or you installed it)")
        if action.action in ("install", "upgrade", "downgrade", "reinstall"):
            changing.add(key)
        plan.actions.append(action)
        if action.action in ("install", "upgrade", "downgrade"):
            plan.requirements.append(action.requirement)
        elif have != BUILTIN:  # what stays must stay consistent with what changes: pip checks the whole set
            plan.requirements.append(need.requirement if action.action != "conflict" else f"{need.name}=={have}")

    if torch_requirement:
        torch_req = Requirement(torch_requirement)
        have = version_of("torch")
        if have is None or (have != BUILTIN and not torch_req.specifier.contains(_base(have), prereleases=True)):
            plan.actions.append(Action("torch", str(torch_req), have, "torch", accepted=str(torch_req.specifier)))

    # Constraints: Slicer's, the PyTorch extension's and pip's own packages stay exactly as
    # they are; anything else installed may be upgraded as a dependency, never downgraded.
    for name, version in sorted(installed.items()):
        if name in changing:
            continue
        if version == BUILTIN:
            plan.constraints[name] = f"{name}<0"  # importable without pip metadata: never let pip add a copy
        elif name in owner:
            plan.constraints[name] = f"{name}=={version}"
        elif not allow_downgrades and _parse_version(version) is not None:
            plan.constraints[name] = f"{name}>={version}"
    for need in map(Need.parse, requirements):
        key = canonicalize_name(need.name)
        if key in owner and key not in plan.constraints and version_of(need.name) == BUILTIN:
            plan.constraints[key] = f"{key}<0"  # importable without pip metadata: never let pip add a copy

    reloaded = [a.name for a in plan.actions if a.action in ("upgrade", "downgrade", "reinstall", "torch")
                and a.installed]
    plan.restart_packages = sorted(n for n in reloaded if import_name(n) in imported_modules)
    plan.restart_required = bool(plan.restart_packages)
    return plan


def constraints_text(plan):
    header = ("# Generated by the TotalSegmentator module. Packages of Slicer (and torch, owned by the PyTorch\n"
              "# extension) stay at the installed version; packages other extensions installed are never downgraded.\n")
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
     "The engine's Python packages conflict with packages Slicer or other extensions installed{detail}.",
     "Nothing was changed: packages of Slicer and of other extensions are never replaced or downgraded. The lines "
     "above name the package that would have to change; update the extension that installed it, use a Slicer "
     "version supported by this extension, or report the log."),
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
            return error_event(kind=kind, type="InstallError", cause=cause.format(detail=detail), fix=fix,
                               returncode=returncode, details=lines[-20:])
    last = next((line for line in reversed(lines) if line.strip()), "")
    return error_event(kind="install", type="InstallError",
                       cause=f"Installing Python packages failed (pip exit code {returncode}): {last}",
                       fix="See the log; then use Advanced > Reinstall dependencies, or report the log.",
                       returncode=returncode, details=lines[-20:])


def install(plan, workdir, python=None, pip_args=(), env=None):
    """Carry out the pip part of `plan` in the background; returns a Run (poll or wait on it).

    The constraints file is written to `workdir` (the caller removes it). torch is not
    installed here: `installation.InstallOperation` installs it first.
    """
    from .runner import SequenceRun, python_executable

    # torch may have changed since the plan was made (it is installed first): pin what is there now.
    now = installed_distributions()
    for name in map(canonicalize_name, PYTORCH_OWNED):
        if name in now and name in plan.constraints:
            plan.constraints[name] = f"{name}=={now[name]}"
    constraints = Path(workdir) / "constraints.txt"
    constraints.write_text(constraints_text(plan), encoding="utf-8")
    commands = pip_commands(plan, python or python_executable(), constraints, pip_args)
    return SequenceRun(commands, env=env, description="Installing Python packages",
                       diagnoser=lambda rc, process: diagnose_pip(rc, process.text_tail()))


def versions_report(requirements=REQUIREMENTS, version_of=installed_version):
    """[(package, installed version or None)] for the panel: torch and the engine's packages."""
    names = ["torch"] + [Need.parse(r).name for r in requirements]
    return [(name, version_of(name)) for name in names]
