"""3D preview PNG: rendered offscreen from the official reference segmentation."""

import nibabel as nib
import numpy as np
import pytest
from png_pixels import read_png

from SegmentationLogic.catalogue import load_catalogue
from SegmentationLogic.outputs.preview import LEGEND_WIDTH, NOTE_BANNER_RGB, _name_color, class_colors, render_preview

SIZE = (640, 420)
NOTE = "TEST MODEL - not the real TotalSegmentator weights"


def has_colour(pixels, rgb, min_pixels=30):
    """Shaded surfaces keep the hue: pixel = colour x light intensity."""
    c = np.asarray(rgb, float)
    c /= np.linalg.norm(c)
    p = pixels.reshape(-1, 3).astype(float)
    norm = np.linalg.norm(p, axis=1)
    bright = norm > 60
    cos = (p[bright] @ c) / norm[bright]
    return int(np.sum(cos > 0.995)) >= min_pixels


@pytest.fixture(scope="module")
def seg(example):
    return nib.load(str(example("example_seg.nii.gz")))


@pytest.fixture(scope="module")
def rendered(seg, tmp_path_factory):
    out = tmp_path_factory.mktemp("preview") / "sub" / "preview_total.png"
    classes = load_catalogue().task("total").classes
    path = render_preview(seg, classes, out, note=NOTE, size=SIZE, title="total --fast",
                          colors={"liver": (255, 0, 255)})
    return path, read_png(path), classes


def test_png_size_and_content(rendered):
    path, pixels, _ = rendered
    assert path.is_file()
    assert pixels.shape == (SIZE[1], SIZE[0], 3)
    assert [p.name for p in path.parent.iterdir()] == ["preview_total.png"]  # no temp file left
    views = pixels[60:-60, int(LEGEND_WIDTH * SIZE[0]):]
    background = views[0, -1]
    assert np.mean(np.any(views != background, axis=-1)) > 0.05  # surfaces, not an empty frame


def test_class_colours_are_in_the_views(rendered, seg):
    _, pixels, classes = rendered
    views = pixels[60:-60, int(LEGEND_WIDTH * SIZE[0]):]
    counts = np.bincount(np.asanyarray(seg.dataobj).ravel())
    largest = [classes[v] for v in np.argsort(counts[1:])[::-1][:4] + 1]
    palette = class_colors(largest, {"liver": (255, 0, 255)})
    assert palette["liver"] == (1.0, 0.0, 1.0)  # the explicit mapping wins
    for name in largest:
        assert has_colour(views, palette[name]), name


def test_note_banner_is_visible(rendered, seg, tmp_path):
    _, pixels, classes = rendered
    banner = np.round(np.array(NOTE_BANNER_RGB) * 255).astype(int)
    bottom = pixels[-int(0.15 * SIZE[1]):]
    assert np.sum(np.all(np.abs(bottom - banner) <= 2, axis=-1)) > 2000
    plain = read_png(render_preview(seg, classes, tmp_path / "p.png", size=SIZE))
    assert np.sum(np.all(np.abs(plain - banner) <= 2, axis=-1)) < 50


def test_older_vtk_path(seg, tmp_path, monkeypatch):
    """Without vtkSurfaceNets3D (VTK < 9.3, older Slicer) flying edges draw the same classes."""
    import vtk

    monkeypatch.delattr(vtk, "vtkSurfaceNets3D")
    classes = load_catalogue().task("total").classes
    pixels = read_png(render_preview(seg, classes, tmp_path / "fe.png", size=SIZE))
    views = pixels[60:-60, int(LEGEND_WIDTH * SIZE[0]):]
    assert has_colour(views, class_colors(["liver"])["liver"])


def test_empty_labelmap_still_renders(tmp_path):
    path = render_preview(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), {}, tmp_path / "e.png",
                          size=(200, 150))
    assert read_png(path).shape == (150, 200, 3)


def test_palette_is_deterministic_and_uses_terminology(monkeypatch):
    a = class_colors(["liver", "spleen", "aorta"])
    assert a == class_colors(["liver", "spleen", "aorta"])
    assert len(set(a.values())) == 3
    for rgb in a.values():  # never the banner red
        assert not np.allclose(rgb, NOTE_BANNER_RGB, atol=0.15)
    from SegmentationLogic import terminology

    monkeypatch.setattr(terminology, "recommended_color", lambda name: (216, 101, 79) if name == "liver" else None)
    b = class_colors(["liver", "spleen"])
    assert b["liver"] == pytest.approx((216 / 255, 101 / 255, 79 / 255))
    assert b["spleen"] == pytest.approx(_name_color("spleen"))  # no recommended colour: name-derived
