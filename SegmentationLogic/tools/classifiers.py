"""The small classifier files some official commands use (modality, contrast phase).

They ship inside the official Python package, which this product does not install. We
take them from the official repository at the same pinned commit as the example data,
check their SHA-256 and keep them in `<TotalSegmentator home>/classifiers/` (where a
user may also copy them by hand). `TOTALSEG_CLASSIFIERS_URL` points the download at a
mirror (a URL ending in '/', serving the files by name). A command's `--model` option
uses a file of the user's instead.
"""
import os
from pathlib import Path

import requests

from ..errors import SegmentationError
from ..system.files import atomic_path, sha256_file
from ..weights import totalseg_home

REPO_COMMIT = "0e65a448d557382b1e925276212b3bec7f5aff83"
BASE_URL = f"https://raw.githubusercontent.com/wasserth/TotalSegmentator/{REPO_COMMIT}/totalsegmentator/resources/"
FILES = {  # file -> sha256 (the files of TotalSegmentator 2.18.0)
    "modality_classifiers_2025_02_24.json.0": "b7ad23eff039a7044f5260f5ebd934d3faa6cc5106a37d71ebde12eec65491ba",
    "modality_classifiers_2025_02_24.json.1": "e983df155d02da883df735f9d46ccc36db7320715d282920da8f334406a83155",
    "modality_classifiers_2025_02_24.json.2": "0b2ba52bcbec1eb693a5eb59143c7bdf1295531438e4b736f87b2960ff321590",
    "modality_classifiers_2025_02_24.json.3": "14b6b92ab138fe5e4a151c9076d7f1e5fa4c861748e7de94df4e72316c89c357",
    "modality_classifiers_2025_02_24.json.4": "34aed06bcd82351d5de2194a437ed7e4d69dcad5c84a02f09fd8d9083f9bf361",
    "contrast_phase_classifiers_2024_07_19.pkl": "7ecd43bf3fb6a6770c26c77cfbbb46e8a190eeddd53351138aa21715c4e273b2",
}
TIMEOUT = (10, 60)  # connect, read (seconds)


class ClassifierError(SegmentationError):
    kind = "weights"


def folder():
    return Path(totalseg_home()) / "classifiers"


def require_xgboost(command):
    try:
        import xgboost  # noqa: F401 - optional (`tools` extra): only these commands need it
    except ImportError:
        raise ClassifierError(f"`{command}` needs XGBoost, which is not installed.",
                              "Install the engine's tools extra: pip install 'totalsegmentator-slicer[tools]' "
                              "(or pip install xgboost-cpu).") from None


def locate(name, download=True):
    """Path of an official classifier file, downloaded (and checked) when missing."""
    path = folder() / name
    if path.is_file() and sha256_file(path) == FILES[name]:
        return path
    if not download:
        raise ClassifierError(f"The classifier file {name} is not in {folder()}.",
                              f"Allow the download, or copy the file from TotalSegmentator {REPO_COMMIT[:8]}'s "
                              "totalsegmentator/resources/ into that folder.")
    _download(name, path)
    return path


def _download(name, dest):
    """Stream the file to a temporary name beside `dest`; it becomes `dest` only with the right SHA-256."""
    url = (os.environ.get("TOTALSEG_CLASSIFIERS_URL") or BASE_URL).rstrip("/") + "/" + name
    fix = f"Check the connection, or copy the file into {dest.parent} (or give it with --model)."
    try:
        with atomic_path(dest) as tmp:
            with requests.get(url, stream=True, timeout=TIMEOUT) as r:  # TLS verified (requests' default)
                r.raise_for_status()
                with open(tmp, "wb") as f:
                    for chunk in r.iter_content(1 << 16):
                        f.write(chunk)
            if sha256_file(tmp) != FILES[name]:
                raise ClassifierError(f"The downloaded classifier {name} has the wrong checksum (from {url}).",
                                      "Retry; if it persists the pinned source has changed: copy the file by hand.")
    except requests.RequestException as e:
        raise ClassifierError(f"Could not download the classifier from {url}: {e}", fix) from e
