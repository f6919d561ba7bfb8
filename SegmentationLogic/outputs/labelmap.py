"""The result labelmap and its label table, as the official tool writes them.

- Multilabel image: uint8, the input's header (codes, qform/sform, descrip kept) with the
  data type set to uint8, plus the official label-map extension (ecode 0, a
  CaretExtension XML LabelTable), so tools that read TotalSegmentator files read ours.
  `read_label_table` is the one parser of that table (ours and the official tool's).
- Sidecar `<name>.labels.json` (multilabel) or `labels.json` (per class): task, label
  values and names, the names of the files the run wrote (how a later run recognises
  them as ours: ownership.py), and a note when the weights were test models.
"""
import re
from pathlib import Path

import nibabel as nib
import numpy as np

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


def lowres_image(labels, affine, class_map):
    """uint8 labelmap left at the model grid (--save_lowres): a header of its own for that grid, the
    label-map extension."""
    img = nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    img.header.extensions.append(nib.nifti1.Nifti1Extension(0, label_table_xml(class_map).encode("utf-8")))
    return img


_LABEL = re.compile(r'<Label Key="(\d+)"[^>]*><!\[CDATA\[(.*?)\]\]></Label>', re.S)


def read_label_table(img):
    """{value: name} from the label table of a multilabel NIfTI written by us or the
    official tool; {} when it has none."""
    for ext in getattr(img.header, "extensions", ()):
        text = ext.get_content()
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        if "<LabelTable>" in text:
            return {int(k): v for k, v in _LABEL.findall(text)}
    return {}


def sidecar(task, class_map, note=None, files=()):
    """The sidecar's content; `files`: the paths the run writes (stored as names, beside it)."""
    return {"task": task, "labels": {str(k): v for k, v in class_map.items()},
            "files": [Path(f).name for f in files], **({"note": note} if note else {})}


