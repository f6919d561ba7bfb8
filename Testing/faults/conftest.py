"""Fixtures of the fault-injection tests: a private copy of the example CT, the engine flags,
and the expensive runs made once and shared by the tests of several fault classes (each
inference costs an interpreter with torch and nnU-Net: CI time)."""
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from faultkit import FASTEST_MODEL, listing, modes, run_batch
from model_zips import zip_dataset


@pytest.fixture
def ct(example, tmp_path):
    """A private copy of the small example CT (3 mm, 122x101x30)."""
    path = tmp_path / "data" / "ct.nii.gz"
    path.parent.mkdir()
    shutil.copy(example("example_ct_sm.nii.gz"), path)
    return path


@pytest.fixture
def engine(test_weights):
    """Flags that make a segment run use the test models, on the CPU, never downloading."""
    return ["--weights_dir", str(test_weights), "--no_download", "--device", "cpu"]


@pytest.fixture(scope="session")
def model_zip(test_weights, tmp_path_factory):
    """The fastest test model zipped as the official release zip (what a mirror serves)."""
    return zip_dataset(Path(test_weights) / FASTEST_MODEL, tmp_path_factory.mktemp("zips") / f"{FASTEST_MODEL}.zip")


@dataclass
class BatchRun:
    run: object  # faultkit.Run
    inputs: Path
    outputs: Path
    summary: str  # summary.csv, modes and listing as the run left them (later tests may change the folder)
    modes: dict
    listing: list
    umask: int


@pytest.fixture(scope="session")
def mixed_batch(example, test_weights, tmp_path_factory):
    """One batch-script run (umask 002) over a good case and three damaged files (truncated,
    empty, a JPEG named .nii.gz): the permissions of its results (class 6) and the failed
    rows of its summary (class 4) come from this one run."""
    root = tmp_path_factory.mktemp("mixed_batch")
    inputs, outputs = root / "in", root / "out"
    inputs.mkdir()
    shutil.copy(example("example_ct_sm.nii.gz"), inputs / "case1.nii.gz")
    data = (inputs / "case1.nii.gz").read_bytes()
    (inputs / "cut.nii.gz").write_bytes(data[:len(data) // 2])
    (inputs / "empty.nii").write_bytes(b"")
    (inputs / "photo.nii.gz").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 300)

    def umask_002():
        os.umask(0o002)

    run = run_batch(["--input-dir", inputs, "--output-dir", outputs, "--quality", "fastest", "--device", "cpu",
                     "--weights-dir", test_weights, "--roi-subset", "liver"], root, preexec=umask_002)
    return BatchRun(run, inputs, outputs, (outputs / "summary.csv").read_text() if outputs.is_dir() else "",
                    modes(outputs) if outputs.is_dir() else {}, listing(outputs), 0o002)
