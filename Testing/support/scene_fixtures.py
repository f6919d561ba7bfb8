"""A real MRML scene (slicer-core) with the example CT loaded, for the module's tests."""
import pytest


@pytest.fixture(scope="module")
def scene_and_ct(example):
    from SegmentationLogic import slicer_import

    scene = slicer_import.new_scene()
    volume = slicer_import.load_volume(scene, example("example_ct_sm.nii.gz"), name="CT")
    yield scene, volume
    slicer_import.release_scene(scene)
