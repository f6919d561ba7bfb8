"""Writing results: the official multilabel NIfTI, or one mask per class, plus label names.

- Multilabel (`ml`): uint8, the input's header (codes, qform/sform, descrip kept) with
  the data type set to uint8, plus the official label-map extension (ecode 0, a
  CaretExtension XML LabelTable), so tools that read TotalSegmentator files read ours.
- Per class: `<output dir>/<class>.nii.gz` (uint8 0/1, input header, no extension) for
  every selected class, empty ones too, as the official tool.
- Sidecar `<name>.labels.json` (multilabel) or `labels.json` (per class): task, label
  values and names, and a note when the weights were test models.

Files are written under temporary names and renamed when all are complete, so a failure
or cancel never leaves half a result behind.
"""
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from .system.files import dump_json, reserve_temp

LABEL_COLOURS = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255], [255, 128, 0],
                 [255, 0, 128], [128, 255, 128], [0, 128, 255], [128, 128, 128], [185, 170, 155]]
_XML_HEAD = ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  <Date><![CDATA[2013-07-14T05:45:09]]></Date>'
             '   <VolumeInformation Index="0">   <LabelTable>')
_XML_TAIL = ('  </LabelTable>  <StudyMetaDataLinkSet>  </StudyMetaDataLinkSet>  <VolumeType><![CDATA[Label]]>'
             '</VolumeType>   </VolumeInformation></CaretExtension>')


def label_table_xml(class_map):
    """The label-map extension text the official tool writes (same bytes)."""
    body = ""
    for value, name in class_map.items():
        r, g, b = LABEL_COLOURS[value % len(LABEL_COLOURS)]
        body += (f'<Label Key="{value}" Red="{r / 255}" Green="{g / 255}" Blue="{b / 255}" Alpha="1">'
                 f'<![CDATA[{name}]]></Label>\n')
    return _XML_HEAD + "\n" + body + "\n" + _XML_TAIL + "\n              "


def output_header(reference):
    """The input header with uint8 data type (what the official output carries)."""
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    return header


def multilabel_image(labels, reference, class_map):
    """uint8 labelmap with the input's header and affine, plus the label-map extension."""
    img = nib.Nifti1Image(labels, reference.affine, output_header(reference))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(0, label_table_xml(class_map).encode("utf-8")))
    return img


def read_label_table(img):
    """{value: name} from a multilabel NIfTI written by us or the official tool (or None)."""
    import re

    for ext in img.header.extensions:
        text = ext.get_content()
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        if "<LabelTable>" in text:
            return {int(k): v for k, v in re.findall(r'<Label Key="(\d+)"[^>]*><!\[CDATA\[(.*?)\]\]>', text)}
    return None


def sidecar_path(output, ml):
    output = Path(output)
    if ml:
        name = output.name
        for suffix in (".nii.gz", ".nii"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        return output.with_name(name + ".labels.json")
    return output / "labels.json"


def sidecar(task, class_map, note=None):
    return {"task": task, "labels": {str(k): v for k, v in class_map.items()},
            **({"note": note} if note else {})}


class AtomicWriter:
    """Collects files under temporary names; `commit()` renames them all, `abort()` removes them."""

    def __init__(self):
        self._pending = []  # (tmp, final)
        self.files = []

    def path(self, final, suffix=""):
        """A temporary path to write `final` to; it is renamed to `final` by `commit()`."""
        tmp = reserve_temp(final, suffix)
        self._pending.append((tmp, Path(final)))
        return tmp

    def nifti(self, img, final):
        # nibabel picks compression from the name: keep the NIfTI suffix at the end of the temp name
        nib.save(img, self.path(final, ".nii.gz" if str(final).endswith(".nii.gz") else ".nii"))

    def json(self, data, final):
        dump_json(data, self.path(final, ".json"))

    def adopt(self, tmp, final):
        """Take over a file someone else wrote to `tmp`."""
        self._pending.append((Path(tmp), Path(final)))

    def commit(self):
        for tmp, final in self._pending:
            os.replace(tmp, final)
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


def write_multilabel(writer, img, output):
    writer.nifti(img, output)


def write_per_class(writer, labels, reference, class_map, output_dir):
    """One uint8 mask per class (all selected classes, empty ones too)."""
    header = output_header(reference)
    for value, name in class_map.items():
        mask = (labels == value).astype(np.uint8)
        writer.nifti(nib.Nifti1Image(mask, reference.affine, header), Path(output_dir) / f"{name}.nii.gz")


def write_body_derived(writer, labels, reference, values, class_map, output_dir):
    """The official extra masks of task 'body' (per-class output): body and skin."""
    from scipy import ndimage

    from .postprocessing import remove_small_blobs

    inv = {v: k for k, v in class_map.items()}
    body = np.isin(labels, [inv["body_trunc"], inv["body_extremities"]]).astype(np.uint8)
    writer.nifti(nib.Nifti1Image(body, reference.affine), Path(output_dir) / "body.nii.gz")
    # skin: one voxel outside minus three inside, soft-tissue HU, small specks removed
    outer = ndimage.binary_dilation(body, iterations=1).astype(np.uint8)
    inner = ndimage.binary_erosion(outer, iterations=3).astype(np.uint8)
    skin = outer - inner
    ct = np.asarray(values, dtype=np.float64)
    skin[~((ct > -200) & (ct < 250))] = 0
    skin = skin.astype(np.uint8)
    remove_small_blobs(skin, [1], 5)
    writer.nifti(nib.Nifti1Image(skin, reference.affine), Path(output_dir) / "skin.nii.gz")
