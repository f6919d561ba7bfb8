"""Writing a run's result files, all or nothing.

- Multilabel (`ml`): the labelmap (labelmap.py) as one NIfTI file.
- Per class: `<output dir>/<class>.nii.gz` (uint8 0/1, input header, no extension) for
  every selected class, empty ones too, as the official tool; task 'body' adds its
  derived body and skin masks (not with `no_derived_masks`).
- DICOM SEG / RTSTRUCT (`output_types`, dicom_outputs.py).
- The label sidecar, statistics.json (or the request's `statistics_file`) and the
  preview PNG beside them; nnU-Net's probabilities where `save_probabilities` says.
- `skip_saving`: no segmentation files, everything else as usual.
After the commit, `write_extras` adds what reads the written files: radiomics features
of the class files and the run report.
- Made with test models (not the real weights), every file says so: the NIfTI description
  field reads TEST_MODEL_DESCRIPTION, statistics.json and the sidecar carry a "note".

Files are written under temporary names and renamed when all are complete
(`AtomicWriter`), so a failure or cancel never leaves half a result behind (nor an
output folder the writer created). Which files a request writes, and the check made
before any work, are in layout.py. A write that fails (disk full, read-only,
permissions) is an OutputPathError naming the file.
"""
import logging
import os
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np

from ..system.files import dump_json, file_error, refuse_overwriting, reserve_temp
from ..system.output_checks import check_free_space
from ..system.signals import deferred
from .labelmap import output_header, sidecar
from .layout import sidecar_path
from .preview import render_preview
from .radiomics import radiomics_features

log = logging.getLogger(__name__)

TEST_MODEL_DESCRIPTION = "TEST MODEL - not the real TotalSegmentator weights"  # NIfTI descrip: 80 bytes


def statistics_document(stats, note=None):
    """statistics.json: the official {class: {volume, intensity}}, after a "note" when test models ran."""
    return {"note": note, **stats} if note else stats


class AtomicWriter:
    """Collects files under temporary names; `commit()` renames them all, `abort()` removes them.

    `protect`: files that must never be replaced (the input image). `note`: set when test
    models made the result; every NIfTI written then says so in its description field."""

    def __init__(self, protect=(), note=None):
        self._pending = []  # (tmp, final)
        self._created = []  # folders this writer made, removed again on abort
        self.files = []
        self.protect = tuple(protect)
        self.note = note

    def path(self, final, suffix=""):
        """A temporary path to write `final` to; it is renamed to `final` by `commit()`."""
        refuse_overwriting(final, self.protect)
        folder = Path(final).parent
        while not folder.exists():
            self._created.append(folder)
            folder = folder.parent
        tmp = reserve_temp(final, suffix)
        self._pending.append((tmp, Path(final)))
        return tmp

    def nifti(self, img, final):
        if self.note:
            img.header["descrip"] = TEST_MODEL_DESCRIPTION.encode()
        # nibabel picks compression from the name: keep the NIfTI suffix at the end of the temp name
        tmp = self.path(final, ".nii.gz" if str(final).endswith(".nii.gz") else ".nii")
        try:
            nib.save(img, tmp)
        except OSError as e:
            raise file_error(e, final) from None

    def json(self, data, final):
        tmp = self.path(final, ".json")
        try:
            dump_json(data, tmp)
        except OSError as e:
            raise file_error(e, final) from None

    def finals(self):
        """The final paths of the files written so far."""
        return [final for _, final in self._pending]

    def text(self, text, final):
        with open(self.path(final), "w", encoding="utf-8") as f:
            f.write(text)

    def adopt(self, tmp, final):
        """Take over a file someone else wrote to `tmp`."""
        refuse_overwriting(final, self.protect)
        self._pending.append((Path(tmp), Path(final)))

    def commit(self):
        with deferred():  # a signal must not leave half of the renames done
            for tmp, final in self._pending:
                try:
                    os.replace(tmp, final)
                except OSError as e:
                    raise file_error(e, final) from None
                self.files.append(final)
            self._pending = []
        return self.files

    def abort(self):
        for tmp, _ in self._pending:
            try:
                Path(tmp).unlink()
            except OSError:
                pass
        self._pending = []
        for folder in dict.fromkeys(self._created):  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty (someone else's files) or gone


def write_multilabel(writer, img, output):
    writer.nifti(img, output)


def write_per_class(writer, labels, reference, class_map, output_dir):
    """One uint8 mask per class (all selected classes, empty ones too)."""
    header = output_header(reference)
    for value, name in class_map.items():
        mask = (labels == value).astype(np.uint8)
        writer.nifti(nib.Nifti1Image(mask, reference.affine, header), Path(output_dir) / f"{name}.nii.gz")


def write_masks(writer, masks, reference, output_dir):
    """Extra masks {file stem: 0/1 array} (e.g. task 'body''s body and skin) with the input's affine."""
    for name, mask in masks.items():
        writer.nifti(nib.Nifti1Image(mask.astype(np.uint8), reference.affine), Path(output_dir) / f"{name}.nii.gz")


def check_output_space(request, n_voxels, n_files):
    """Once the input's size is known (still before inference): enough free disk for the
    results? Estimate: an uncompressed .nii labelmap is 1 byte per voxel; gzip shrinks a
    labelmap at least 20 times and a single-class mask at least 200 times."""
    output = Path(request.output)
    if request.ml:
        need = n_voxels + 65536 if not output.name.lower().endswith(".gz") else n_voxels // 20 + 65536
        folder = output.parent
    else:
        need = n_files * (n_voxels // 200 + 4096)
        folder = output
    if request.preview:
        need += 2 * 1024 * 1024
    check_free_space(folder, need)


def write_result(request, result, reference, progress, extra_masks=None, dicom=None, probabilities=None):
    """Every file a run's `request` asks for, from its `result`; all written or none. Returns the paths.

    `reference`: the input image (header and affine of per-class files); `extra_masks`:
    {file stem: mask} written beside per-class files (task 'body''s body and skin);
    `dicom`: the run's dicom_outputs.OutputPlan or None; `probabilities`: nnU-Net's
    (probabilities, properties) for `save_probabilities`."""
    ml = request.ml or dicom is not None
    output = None if request.output is None else (dicom.main_path if dicom is not None else Path(request.output))
    out_dir = None if output is None else (dicom.directory if dicom is not None else output.parent if ml else output)
    # the NIfTI result (labelmap or per-class folder), with its sidecar; None: only DICOM or nothing
    nifti = None
    if output is not None and not request.skip_saving and (dicom is None or dicom.nifti is not None):
        nifti = output if dicom is None else dicom.nifti
    writer = AtomicWriter(protect=[request.input], note=result.model_note)
    try:
        if output is not None and not request.skip_saving:
            progress("save", 0.0, f"writing {output}")
            if nifti is not None:
                if ml:
                    write_multilabel(writer, result.labelmap, nifti)
                else:
                    write_per_class(writer, np.asanyarray(result.labelmap.dataobj), reference, result.class_map,
                                    output)
                    write_masks(writer, extra_masks or {}, reference, output)
            if dicom is not None:
                dicom.write(writer, result.labelmap, result.class_map, request.task, result.model_note, progress)
        if result.statistics is not None and (request.statistics_file or out_dir is not None):
            writer.json(statistics_document(result.statistics, result.model_note),
                        request.statistics_file or out_dir / "statistics.json")
        if request.preview and out_dir is not None:
            title = f"TotalSegmentator {request.task}" + (f" --{request.quality}" if request.quality != "normal"
                                                          else "")
            _preview(writer, result, out_dir / f"preview_{request.task}.png", title, progress)
        if request.save_probabilities and probabilities is not None:
            write_probabilities(writer, probabilities, Path(request.save_probabilities))
        if nifti is not None:
            label_file = sidecar_path(nifti, ml)  # last: it lists what this run wrote
            writer.json(sidecar(request.task, result.class_map, result.model_note, writer.finals() + [label_file]),
                        label_file)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def write_probabilities(writer, probabilities, path):
    """nnU-Net's class probabilities (`probabilities` in an .npz, at the grid nnU-Net saw) at `path`, and
    the prediction's properties pickled beside it (`path` with suffix .pkl), as the official --save_probabilities."""
    values, properties = probabilities
    with open(writer.path(path), "wb") as f:  # an open file: numpy would append .npz to a name
        np.savez_compressed(f, probabilities=values)
    with open(writer.path(path.with_suffix(".pkl")), "wb") as f:
        pickle.dump(properties, f)


def write_extras(request, result, progress, report=None):
    """What reads the committed files: radiomics of the class files, then the run report. Returns the paths."""
    files = []
    if request.radiomics and request.output is not None:
        progress("save", None, "computing radiomics features")
        writer = AtomicWriter(protect=[request.input])
        try:
            writer.json(radiomics_features(request.input, Path(request.output)),
                        Path(request.output) / "statistics_radiomics.json")
            files += writer.commit()
        except BaseException:
            writer.abort()
            raise
    if report is not None:
        writer = AtomicWriter(protect=[request.input])
        writer.json(report, Path(request.report))
        files += writer.commit()
    return files


def _preview(writer, result, png, title, progress):
    tmp = reserve_temp(png, ".png")
    try:
        render_preview(result.labelmap, result.class_map, tmp, note=result.model_note, title=title)
    except Exception as e:  # noqa: BLE001 - a picture must not cost the user the segmentation
        tmp.unlink(missing_ok=True)
        log.warning("preview failed", exc_info=True)
        progress.log(f"Preview not written ({type(e).__name__}: {e}); the segmentation itself is complete.",
                     "warning")
        return
    writer.adopt(tmp, png)
