"""Find the TotalSegmentator example images used by the demo, tests and benchmarks (test support, not product).

They are not part of this project. Lookup order: `$TOTALSEG_EXAMPLES_DIR`, a
`shared/data/totalseg_examples` folder next to (or above) the checkout, the user cache
(`~/.cache/totalsegmentator-slicer/examples`), and finally a download from the public
TotalSegmentator repository at a pinned commit, checked against SHA-256 sums.
"""
import hashlib
import os
from pathlib import Path

from SegmentationLogic.errors import WeightsDownloadError

REPO_COMMIT = "0e65a448d557382b1e925276212b3bec7f5aff83"
BASE_URL = f"https://raw.githubusercontent.com/wasserth/TotalSegmentator/{REPO_COMMIT}/tests/reference_files/"

# file (relative to reference_files/) -> sha256
FILES = {
    "example_ct_sm.nii.gz": "e50c00b2914e2cac0aaee8e7f3b5f57d44d9f21bfd5c0577271c54c0cb49e9fb",
    "example_mr_sm.nii.gz": "209b46efaff595dd54a9332872e17a722b62654bbb68dbd89acd5090701bbd4f",
    "example_seg.nii.gz": "8be652475a4aaae83103a66bfb3345314b1fc06742807a06cf5005f7a7913a2d",
    "example_seg_dicom.nii.gz": "98af7f6536c316ff9084054f20956cd3e28af376b81d582d269fbea2744878fc",
    "example_seg_fast.nii.gz": "353a7c65c9ff5d5b9b331f811130f0ebbaedb509df74587d3bd0d1ad5ebc3910",
    "example_seg_fast_body_seg.nii.gz": "335a5a7059ab75c2e7b4eec2973e2afe9705534a243435e57bbcd06884e3ebfb",
    "example_seg_mr.nii.gz": "e73a5ee12962aa2bb2f3e43ab58dfc67990c5a7ef2dcb426a1bf5e5982b9587f",
    "example_seg_roi_subset.nii.gz": "974faefc5c7821be5b8a02795009e9761aa1b37350057a9c39aeded48cb74cd3",
    "example_seg_roi_subset_mr.nii.gz": "b30662b90b3a41b822ed3cead3145d5c2b51633fd72611b9c15a4da6eeec177e",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016573": "4c5633409fa4d3edf6871e5684e9e1b10325b4d0949997582f43b23a684d0dc4",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016574": "9148f91127145497f4d6c6f0780f9452504cd7fe5088ec8f2bf2b21800c731ff",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016575": "3edaccec892e0821440cbefe3d5465923bb5146c316cbaf58f578d962f120484",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016576": "9b68685f0c5f9bfcfc2c397f4fadf431da288d7422ca72e7d9031d4e039418cd",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016577": "c8d2c0dc05e414d47d3652c658d8fecc20c3cf7ce106c10d84ad033d39700bcc",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016578": "0ee2c1d58e06cedd91483ca35c04da3c26fea0dbe88aaf1eaa950b57f38357d6",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016579": "c76cf0818d4215b92883d109b8a0b62ae0a4d81637eed98738f9c62b6f49bb72",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016580": "106e20514fd3ca66895e14dbfba96c01c1195e4ed890c035d4368dd71f3ee116",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016581": "5804e6c4a50f4d5b20040ac82a1c6d79cba5f7267d71f10b0a1b49eda1bc13ff",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016582": "bef219a16b22949224de4581a2d288863b2585d29556ac24021f03307378cb39",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016583": "9de5a49e880417d5330fe299115fdb95831a98234216a31c5c0e9a0be9a6dcd3",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016584": "fa00c8d81ec8aa0d0cfc4e05343782c3a75a4c60df8cccf9ff5db42ac454e61d",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016585": "ebba0900b0f728db0c94c769db3e5ca38a0cd916386a727541eb3e56350770e5",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016586": "f084ec95cfba25efb7cbe86e8b4966b051904037e8385f58fe398c5475693b89",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016587": "20a9b88a30ea8a824ac65cb19c1ebf80964b41ff476497706ff2a286e5f27a25",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016588": "2a515d3b60f3ff733aac1fc5414206c331e3ed2ccef8c2e0c30b844c538e3ed8",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016589": "5880669f1bc36b09cad4bdf487992ec415da0afa014e927efc282e612f467574",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016590": "7af4dd5b5766a87368939116b91f90d989820e7b2237fb9bcd10d47db0960875",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016591": "671306f4462ae881976c18c6a2d8a1567279fb0166ef0e9e8a41271fac9c1cbb",
    "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016592": "fdb76ad5272f074e07cc81509604fd163f2f8a9903d34b16ba6f078250373c51",
}
DICOM_DIR = "example_ct_dicom"


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "totalsegmentator-slicer" / "examples"


def _candidate_dirs():
    env = os.environ.get("TOTALSEG_EXAMPLES_DIR")
    if env:
        yield Path(env)
    seen = set()
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for parent in (start, *start.parents):
            cand = parent / "shared" / "data" / "totalseg_examples"
            if cand not in seen:
                seen.add(cand)
                yield cand
    yield cache_dir()


def _complete(folder, names):
    return all((folder / n).is_file() for n in names)


def _names(name):
    if name == DICOM_DIR:
        return sorted(n for n in FILES if n.startswith(DICOM_DIR + "/"))
    if name not in FILES:
        raise KeyError(f"unknown example file {name!r}; known: {sorted({n.split('/')[0] for n in FILES})}")
    return [name]


def example_path(name, download=True, progress=None):
    """Path of an example file (or of the DICOM folder for 'example_ct_dicom')."""
    names = _names(name)
    for folder in _candidate_dirs():
        if _complete(folder, names):
            return folder / name
    if not download:
        raise FileNotFoundError(f"Example data {name} not found; set TOTALSEG_EXAMPLES_DIR or allow download.")
    target = cache_dir()
    for i, n in enumerate(names):
        _download(n, target / n)
        if progress:
            progress("download", (i + 1) / len(names), f"example data {n}")
    return target / name


def _download(name, dest):
    if dest.is_file() and _sha256(dest) == FILES[name]:
        return
    download_checked(BASE_URL + name, dest, FILES[name], "example data",
                     "Check the internet connection, or copy the TotalSegmentator test files into a folder and set "
                     "TOTALSEG_EXAMPLES_DIR to it.")


def download_checked(url, dest, sha256, what, fix, error=WeightsDownloadError):
    """Stream `url` to `dest` (a temporary name until its SHA-256 matches); `error(cause, fix)` on failure."""
    import requests  # imported lazily: most callers find their files locally

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part{os.getpid()}")
    try:
        with requests.get(url, stream=True, timeout=(10, 60)) as r:
            r.raise_for_status()
            with open(tmp, "wb") as f:
                for chunk in r.iter_content(1 << 16):
                    f.write(chunk)
        if _sha256(tmp) != sha256:
            raise error(f"The downloaded {what} {dest.name} has the wrong checksum (from {url}).",
                        "Retry; if it persists the pinned source has changed: copy the file by hand.")
        os.replace(tmp, dest)
    except requests.RequestException as e:
        raise error(f"Could not download {what} from {url}: {e}", fix) from e
    finally:
        tmp.unlink(missing_ok=True)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
