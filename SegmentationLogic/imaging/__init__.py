"""Input images: reading every format, checking they can be segmented, the modality guess.

    read         load_image / open_input: NIfTI, NRRD, MetaImage, DICOM folder, file or zip
    dicom        DICOM series grouped by geometry, read as the official dicom2nifti conversion
    archive      a zip of one DICOM series (unpacked privately, removed afterwards)
    itk_files    NRRD / MetaImage through SimpleITK, as NIfTI
    checks       check_image: geometry, size, values (cause + fix)
    modality     guess_modality / check_modality / modality_warning (numpy only)
    orientation  to_canonical / from_canonical
"""
import importlib

_API = {"load_image": "read", "open_input": "read", "as_3d": "read", "select_volume": "read",
        "SUPPORTED": "dicom", "check_image": "checks", "estimate_memory_bytes": "checks",
        "ImageTooLargeError": "checks", "guess_modality": "modality", "check_modality": "modality",
        "modality_warning": "modality", "to_canonical": "orientation", "from_canonical": "orientation"}


def __getattr__(name):
    # Lazy: `imaging.modality` needs only numpy, so the Slicer panel can guess a modality
    # before nibabel and SimpleITK are installed; importing this package must not pull them in.
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(name)


__all__ = sorted(_API)
