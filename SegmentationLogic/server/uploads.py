"""First look at an upload, before it queues: is it the image the client says it is?

A non-image (a PNG, a PDF, a report) is refused at once with a cause, not after minutes
in the queue. The header is read with the engine's own readers (nibabel, SimpleITK), so
a damaged header gets their message. Headers that point at other files are refused: an
NRRD "data file:" or a MetaImage "ElementDataFile" other than LOCAL would make the
server read a file of its own disk (another job's upload, /etc/...) as pixel data.
"""
import zipfile

import nibabel as nib

from ..errors import InputImageError

FIX = "Send the image as NIfTI (.nii.gz), NRRD (.nrrd), MetaImage (.mha) or a zip of one DICOM series."
FORMAT_NAMES = {"nii.gz": "gzip-compressed NIfTI", "nii": "NIfTI", "nrrd": "NRRD", "mha": "MetaImage (.mha)",
                "zip": "zip"}
_LOOKS_LIKE = ((b"\x89PNG", "a PNG picture"), (b"\xff\xd8\xff", "a JPEG picture"), (b"%PDF", "a PDF document"),
               (b"GIF8", "a GIF picture"), (b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "a gzip-compressed file"),
               (b"NRRD", "an NRRD image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"))


_NIFTI_HEADER_SIZES = {n.to_bytes(4, order) for n in (348, 540) for order in ("little", "big")}  # NIfTI-1, -2


def _looks_like(head):
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "a single DICOM file (send a zip of the whole series)"
    for magic, name in _LOOKS_LIKE:
        if head.startswith(magic):
            return name
    if not head:
        return "empty"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unknown binary data"


def _refuse(fmt, head, detail=None):
    what = detail or f"it looks like {_looks_like(head)}"
    raise InputImageError(f"The upload is not a {FORMAT_NAMES[fmt]} image: {what}.", FIX)


def _header_text(path, limit=65536):
    with open(path, "rb") as f:
        head = f.read(limit)
    end = head.find(b"\n\n")
    return head[: end if end >= 0 else limit].decode("latin-1", "replace")


def probe(path, fmt):
    """Raise InputImageError (cause + fix) unless `path` starts like a readable image of format `fmt`."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        raise InputImageError("The upload is empty.", FIX)
    if fmt == "zip":
        if not zipfile.is_zipfile(path):
            _refuse(fmt, head)
        try:
            with zipfile.ZipFile(path) as zf:
                if not any(not i.is_dir() for i in zf.infolist()):
                    raise InputImageError("The uploaded zip holds no files.", FIX)
        except zipfile.BadZipFile as e:
            _refuse(fmt, head, f"the zip cannot be opened ({e})")
        return
    if fmt == "nii.gz" and not head.startswith(b"\x1f\x8b"):
        _refuse(fmt, head)
    if fmt == "nii" and head[:4] not in _NIFTI_HEADER_SIZES:
        _refuse(fmt, head)
    if fmt == "nrrd":
        if not head.startswith(b"NRRD"):
            _refuse(fmt, head)
        for line in _header_text(path).splitlines():
            if line.lower().replace(" ", "").startswith("datafile:"):
                raise InputImageError("The uploaded NRRD header points at a separate data file.",
                                      "Save the image as one .nrrd file (header and data together).")
    if fmt == "mha":
        text = _header_text(path)
        if "ObjectType" not in text or "ElementDataFile" not in text:
            _refuse(fmt, head)
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "ElementDataFile" and value.strip().upper() != "LOCAL":
                raise InputImageError("The uploaded MetaImage header points at a separate data file.",
                                      "Save the image as one .mha file (header and data together).")
    _read_header(path, fmt, head)


def _read_header(path, fmt, head):
    """The engine's readers on the header only (the pixels are read when the job runs)."""
    if fmt in ("nii.gz", "nii"):
        try:
            img = nib.load(str(path))  # lazy: header only
            img.header.get_data_shape()
        except Exception as e:  # noqa: BLE001 - nibabel raises many types for broken files
            _refuse(fmt, head, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable header'}")
        return
    import SimpleITK as sitk  # NRRD / MetaImage only (seconds to import)

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        _refuse(fmt, head, f"the header cannot be read ({lines[-1] if lines else 'unknown error'})")
