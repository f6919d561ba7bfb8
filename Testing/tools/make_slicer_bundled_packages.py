"""Regenerate Resources/slicer_bundled_packages.json: the Python packages each supported Slicer ships.

Developer tool, not part of the product: the first-run installer
(TotalSegmentatorLib/dependencies.py) reads the generated file to know which packages
belong to Slicer (never replaced) and which another extension or the user installed.

    python Testing/tools/make_slicer_bundled_packages.py [--slicer-git DIR]

Read from Slicer's sources at every 5.10.x and 5.12.x tag and the default branch (the
preview): the Python version (Slicer_REQUIRED_PYTHON_VERSION in CMakeLists.txt), the
hash-pinned requirements of SuperBuild/External_python-*.cmake (numpy, scipy, requests,
pydicom, pip, ... with every dependency, as --require-hashes demands), VTK's dist-info
version for the default VTK minor version (External_VTK.cmake) and SimpleITK, which
5.10 builds from Slicer's fork (External_SimpleITK.cmake, version from the tag name)
and 5.12 installs as a wheel. Official builds enable the DICOM and extension-manager
requirements, so they are included.
"""
import argparse
import json
import re
import sys
from pathlib import Path

from slicer_sources import DEFAULT_SLICER_GIT, Git, supported_releases

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "Resources" / "slicer_bundled_packages.json"
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.M)


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def python_version(git, ref):
    m = re.search(r'set\(Slicer_REQUIRED_PYTHON_VERSION "(\d+\.\d+\.\d+)"\)', git.show(ref, "CMakeLists.txt"))
    return m.group(1)


def pinned_requirements(git, ref):
    """{package: (version, file)} from the requirements blocks of SuperBuild/External_python-*.cmake."""
    found = {}
    for path in git.files(ref, "SuperBuild"):
        name = path.rsplit("/", 1)[-1]
        if not (name.startswith("External_python-") and name.endswith(".cmake")):
            continue
        text = git.show(ref, path)
        for block in re.findall(r"\[===\[(.*?)\]===\]", text, re.S):
            for package, version in REQUIREMENT.findall(block):
                previous = found.get(canonical(package))
                if previous and previous[0] != version:
                    raise SystemExit(f"{ref}: {package} pinned at {previous[0]} ({previous[1]}) and {version} ({name})")
                found[canonical(package)] = (version, name)
    return found


def vtk_version(git, ref):
    top = git.show(ref, "CMakeLists.txt")
    major = re.search(r'set\(_default_vtk_major_version "(\d+)"\)', top).group(1)
    minor = re.search(r'set\(_default_vtk_minor_version "(\d+)"\)', top).group(1)
    text = git.show(ref, "SuperBuild/External_VTK.cmake")
    m = re.search(rf'STREQUAL "{major}\.{minor}"\)\s*\n\s*set\(_git_tag[^\n]*\n\s*set\(vtk_dist_info_version "([^"]+)"\)',
                  text)
    if not m:
        raise SystemExit(f"{ref}: no vtk_dist_info_version for VTK {major}.{minor} in External_VTK.cmake")
    return m.group(1)


def simpleitk_from_source(git, ref):
    """Version of SimpleITK built from Slicer's fork (Slicer_SimpleITK_GIT_TAG comment 'slicer-vX.Y.Z-...')."""
    text = git.show(ref, "SuperBuild/External_SimpleITK.cmake") or ""
    m = re.search(r'Slicer_\$\{proj\}_GIT_TAG\s+"[0-9a-f]+"\s*#\s*slicer-v(\d+\.\d+\.\d+)', text)
    return m.group(1) if m else None


def release_entry(git, release):
    packages = {name: version for name, (version, _) in pinned_requirements(git, release.ref).items()}
    packages["vtk"] = vtk_version(git, release.ref)
    notes = {"vtk": "built with Slicer; dist-info written by SuperBuild/External_VTK.cmake"}
    if "simpleitk" not in packages:
        version = simpleitk_from_source(git, release.ref)
        if version:
            packages["simpleitk"] = version
            notes["simpleitk"] = "built from Slicer's SimpleITK fork (External_SimpleITK.cmake); version from its tag"
    return {"slicer": release.version, "line": release.name, "ref": release.ref, "commit": release.commit,
            "date": release.date, "python": python_version(git, release.ref),
            "packages": dict(sorted(packages.items())), "notes": notes}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slicer-git", type=Path, default=DEFAULT_SLICER_GIT)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    git = Git(args.slicer_git)
    data = {
        "generated_by": "Testing/tools/make_slicer_bundled_packages.py",
        "source": "Slicer's CMakeLists.txt and SuperBuild/External_python-*.cmake, External_VTK.cmake, "
                  "External_SimpleITK.cmake at each tag (package names canonicalised, as pip compares them)",
        "releases": [release_entry(git, r) for r in supported_releases(git, all_patches=True)],
    }
    args.output.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    for r in data["releases"]:
        print(f"Slicer {r['slicer']} ({r['ref']}): Python {r['python']}, {len(r['packages'])} packages, "
              f"numpy {r['packages'].get('numpy')}, scipy {r['packages'].get('scipy')}, "
              f"SimpleITK {r['packages'].get('simpleitk')}, vtk {r['packages']['vtk']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
