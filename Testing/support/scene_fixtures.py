"""A real MRML scene (slicer-core) with the example CT loaded, for the module's tests."""
import pytest


@pytest.fixture(scope="module")
def scene_and_ct(example):
    from SegmentationLogic.mrml import scene as mrml_scene

    scene = mrml_scene.new_scene()
    volume = mrml_scene.load_volume(scene, example("example_ct_sm.nii.gz"), name="CT")
    yield scene, volume
    mrml_scene.release_scene(scene)
