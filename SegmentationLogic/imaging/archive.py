"""A zip holding one DICOM series: unpacked into a private temporary folder, read, removed.

Entries that could land outside that folder are refused before anything is unpacked,
and the folder is removed whatever happens (the pixel data is in memory by then), so no
patient data is left behind in temp.
"""
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..errors import InputImageError
from ..progress import Reporter
from ..system.files import zip_member_problem
from .dicom import load_dicom_folder


def safe_members(zf, zip_path):
    """The members of a zip, refused (InputImageError) if any could land outside the folder it is unpacked to."""
    members = []
    for info in zf.infolist():
        why = zip_member_problem(info)
        if why:
            raise InputImageError(
                f"Refusing {Path(zip_path).name}: entry '{info.filename}' ({why}) points outside the archive "
                "or cannot be unpacked safely.",
                "The zip is unsafe or damaged; create it again from the DICOM folder.")
        members.append(info)
    return members


def load_dicom_zip(path, progress=None, series_uid=None, available_bytes=None):
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputImageError(f"Cannot open zip file {path.name}: {e}",
                              "The zip is damaged; create it again from the DICOM folder.") from e
    with zf:
        members = safe_members(zf, path)
        need = sum(m.file_size for m in members)
        tmp = tempfile.mkdtemp(prefix="totalseg_dicom_")
        try:
            free = shutil.disk_usage(tmp).free
            if need > free:
                raise InputImageError(
                    f"Unpacking {path.name} needs {need / 2**30:.1f} GiB, but the temporary folder "
                    f"{tempfile.gettempdir()} has {free / 2**30:.1f} GiB free.",
                    "Free disk space, set TMPDIR to a larger disk, or unzip the series yourself and give the folder.")
            Reporter(progress, "load")(0.0, f"unpacking {path.name} ({len(members)} files)")
            try:
                zf.extractall(tmp, members)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise InputImageError(f"Cannot unpack {path.name}: {e}",
                                      "The zip is damaged; create it again from the DICOM folder.") from e
            img = load_dicom_folder(Path(tmp), progress, series_uid, available_bytes)
            # the pixel data is in memory (not a proxy on the files we are about to remove)
            return img
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
