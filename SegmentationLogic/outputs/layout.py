"""Which files a run writes, and whether they may be written: names only, no numpy or
nibabel (the remote client, which runs in Slicer's Python before anything is installed,
checks its outputs with the same rules).

- `output_files(request, class_names, extra_masks)`: the labelmap (`ml`) or one
  `<class>.nii.gz` per class (then the extra masks, e.g. task 'body''s body and skin), the
  sidecar (`sidecar_path`), statistics.json and the preview when asked; the writer writes
  exactly these.
- `check_request_outputs(...)`: before any work, refuses what cannot be written or would
  replace something that must survive (system/output_checks.py; ours: ownership.py).
"""
from pathlib import Path

from ..errors import OutputPathError
from ..system.output_checks import check_outputs
from .ownership import is_ours

NIFTI_SUFFIXES = (".nii.gz", ".nii")
BODY_EXTRA_MASKS = ("body", "skin")  # task 'body', per-class output (postprocessing.body_derived_masks)


def sidecar_path(output, ml):
    """`<name>.labels.json` beside a multilabel `<name>.nii.gz`, or `labels.json` in a per-class folder."""
    output = Path(output)
    if ml:
        name = output.name
        for suffix in (".nii.gz", ".nii"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        return output.with_name(name + ".labels.json")
    return output / "labels.json"


def class_files(spec, roi_subset, ml):
    """(class names, extra mask stems) of the per-class files a task writes (none with `ml`)."""
    if ml:
        return [], ()
    names = [v for v in spec.classes.values() if roi_subset is None or v in roi_subset]
    return names, BODY_EXTRA_MASKS if spec.postprocessing == "body" else ()


def output_files(request, class_names, extra_masks=()):
    """Every file a run of `request` writes: the labelmap or one mask per class (then the
    `extra_masks` stems), the sidecar, statistics.json and the preview when asked."""
    output = Path(request.output)
    out_dir = output.parent if request.ml else output
    if request.ml:
        files = [output]
    else:
        files = [output / f"{name}.nii.gz" for name in list(class_names) + list(extra_masks)]
    files.append(sidecar_path(output, request.ml))
    if request.statistics:
        files.append(out_dir / "statistics.json")
    if request.preview:
        files.append(out_dir / f"preview_{request.task}.png")
    return files


def check_request_outputs(request, class_names, extra_masks=()):
    """Before any work: the files `request` will write can be written and replace nothing
    they must not (system/output_checks.py; ours: ownership.py). Returns output_files(...)."""
    output = Path(request.output)
    if request.ml and output.is_dir():
        raise OutputPathError(f"The output {output} is an existing folder, but --ml writes one multilabel file.",
                              f"Give a file name, e.g. {output / 'segmentation.nii.gz'}, or drop --ml for one file "
                              "per class in that folder.")
    if request.ml and not output.name.lower().endswith(NIFTI_SUFFIXES):
        raise OutputPathError(f"The multilabel output {output} must be a NIfTI file name (.nii.gz or .nii).",
                              "Add .nii.gz to the output name, or drop --ml for a folder with one file per class.")
    files = output_files(request, class_names, extra_masks)
    check_outputs(files, [request.input], overwrite=request.overwrite, is_ours=is_ours,
                  folder=None if request.ml else output)
    return files
