"""Read Slicer's (and CTK's) sources at the supported release tags from a git mirror.

Developer-tool helper, not part of the product. The mirror is a bare clone of
github.com/Slicer/Slicer (`--slicer-git`, default: the one the search tool's `fetch`
makes under /work/.mirror); CTK is read at the commit each Slicer version pins in
SuperBuild/External_CTK.cmake (`--ctk-git`).

Supported Slicer versions (README "Supported Slicer versions"): 5.10, the newest 5.12.x
tag, and the preview (the default branch's head).
"""
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SLICER_GIT = Path("/work/.mirror/Slicer+Slicer/repo")
DEFAULT_CTK_GIT = Path("/work/.mirror/commontk+CTK/repo")
SUPPORTED = (("5.10", r"v5\.10\.\d+"), ("5.12", r"v5\.12\.\d+"), ("preview", None))


class Git:
    def __init__(self, folder):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SystemExit(f"No git mirror at {self.folder}: fetch github:Slicer/Slicer (or github:commontk/CTK) "
                             "with the search tool, or pass its folder.")

    def run(self, *args):
        return subprocess.run(["git", "-C", str(self.folder), *args], capture_output=True, text=True,
                              check=True).stdout

    def show(self, ref, path):
        try:
            return self.run("show", f"{ref}:{path}")
        except subprocess.CalledProcessError:
            return None

    def files(self, ref, *prefixes):
        return self.run("ls-tree", "-r", "--name-only", ref, "--", *prefixes).split()

    def read_many(self, ref, paths):
        """{path: text} for many files at once (one git process)."""
        if not paths:
            return {}
        request = "".join(f"{ref}:{path}\n" for path in paths)
        data = subprocess.run(["git", "-C", str(self.folder), "cat-file", "--batch"], input=request.encode(),
                              capture_output=True, check=True).stdout
        out, pos = {}, 0
        for path in paths:
            header_end = data.index(b"\n", pos)
            header = data[pos:header_end].split()
            if header[-1] == b"missing":
                pos = header_end + 1
                continue
            size = int(header[2])
            out[path] = data[header_end + 1:header_end + 1 + size].decode("utf-8", "replace")
            pos = header_end + 1 + size + 1
        return out

    def commit(self, ref):
        return self.run("rev-parse", f"{ref}^{{commit}}").strip()

    def date(self, ref):
        return self.run("log", "-1", "--format=%cs", ref).strip()

    def tags(self):
        return self.run("tag", "-l").split()

    def default_branch(self):
        for name in ("main", "master"):
            try:
                self.commit(name)
                return name
            except subprocess.CalledProcessError:
                continue
        raise SystemExit(f"{self.folder}: neither main nor master")


def _version_key(tag):
    return tuple(int(x) for x in re.findall(r"\d+", tag))


@dataclass
class Release:
    name: str       # "5.10", "5.12", "preview"
    ref: str        # git tag or branch
    commit: str
    date: str
    version: str    # Slicer_VERSION_MAJOR.MINOR.PATCH at that ref


def slicer_version(git, ref):
    text = git.show(ref, "CMakeLists.txt")
    parts = [re.search(rf'set\(Slicer_VERSION_{p} "(\d+)"\)', text).group(1) for p in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts)


def supported_releases(git, all_patches=False):
    """The supported releases, oldest first; with all_patches every 5.10.x / 5.12.x tag."""
    tags = git.tags()
    releases = []
    for name, pattern in SUPPORTED:
        if pattern is None:
            refs = [git.default_branch()]
        else:
            matching = sorted((t for t in tags if re.fullmatch(pattern, t)), key=_version_key)
            if not matching:
                raise SystemExit(f"No tag matching {pattern} in {git.folder}: update the mirror.")
            refs = matching if all_patches else matching[-1:]
        for ref in refs:
            releases.append(Release(name, ref, git.commit(ref), git.date(ref), slicer_version(git, ref)))
    return releases


def ctk_commit(git, ref):
    """The CTK commit Slicer's SuperBuild pins at `ref`."""
    text = git.show(ref, "SuperBuild/External_CTK.cmake")
    m = re.search(r'Slicer_\$\{proj\}_GIT_TAG\s+"([0-9a-f]{40})"', text)
    if not m:
        raise SystemExit(f"{ref}: no CTK GIT_TAG in SuperBuild/External_CTK.cmake")
    return m.group(1)
