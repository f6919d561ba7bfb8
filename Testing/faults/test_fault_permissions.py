"""Class 6, permissions: every output is created like any file the user makes (mode
0666/0777 minus the umask), per output type - masks, labelmap, sidecars, statistics,
preview, the batch script's .seg.nrrd and summary, vessel files, downloaded and
imported weights - while the licence key stays readable by its owner only.

Runs also show that a second run replaces the results of the first (recognised as ours)
without --overwrite.
"""
import os
import stat
from pathlib import Path

from faultkit import FASTEST_MODEL as FOLDER
from faultkit import assert_nothing_left, modes, run_batch, run_cli, run_cli_many
from http_server import WeightsServer


def _umask(mask):
    def set_mask():
        os.umask(mask)
    return set_mask


def _assert_modes(root, mask, found=None):
    """Every file under `root` is 0666 and every folder 0777 minus `mask` (`found`: modes(root) taken earlier)."""
    for name, mode in (found or modes(root)).items():
        wanted = (0o777 if (Path(root) / name).is_dir() else 0o666) & ~mask
        assert mode == wanted, f"{name}: {oct(mode)} instead of {oct(wanted)} (umask {oct(mask)})"


def test_segment_outputs_follow_the_umask_and_a_rerun_replaces_its_own_results(ct, engine, tmp_path):
    out = tmp_path / "results"
    args = ["segment", "-i", ct, "--fastest", "--roi_subset", "liver", "spleen", "kidney_left", *engine]
    run = run_cli([*args, "-o", out, "--statistics", "--preview"], tmp_path, preexec=_umask(0o027))
    assert run.rc == 0, run.stderr[-3000:]
    assert {"liver.nii.gz", "labels.json", "statistics.json", "preview_total.png"} <= {p.name for p in out.iterdir()}
    _assert_modes(out, 0o027)
    # the same folder again, as a multilabel file with statistics: the earlier statistics.json
    # is ours (listed in labels.json) and is replaced (the preview is not rendered twice: CI time)
    run = run_cli([*args, "-o", out / "seg.nii.gz", "--ml", "--statistics"], tmp_path, preexec=_umask(0o002))
    assert run.rc == 0, run.stderr[-3000:]
    found = modes(out)
    for name in ("seg.nii.gz", "seg.labels.json", "statistics.json"):
        assert found[name] == 0o664, (name, oct(found[name]))
    assert found["liver.nii.gz"] == found["preview_total.png"] == 0o640  # untouched by the second run
    assert_nothing_left(run, out)


def test_batch_and_vessel_outputs_follow_the_umask(mixed_batch, tmp_path):
    outputs = mixed_batch.outputs
    assert mixed_batch.listing == ["case1.seg.nrrd", "summary.csv"], mixed_batch.run.stdout[-2000:]
    _assert_modes(outputs, mixed_batch.umask, mixed_batch.modes)
    # a second batch accepts its own .seg.nrrd and summary without --overwrite (its case then
    # fails at once on an unknown task: no model runs) and starts a new summary under the new umask
    seg_mode = mixed_batch.modes["case1.seg.nrrd"]
    run = run_batch(["--input-dir", mixed_batch.inputs, "--output-dir", outputs, "--task", "no_such_task"],
                    tmp_path, preexec=_umask(0o022))
    assert run.rc == 1 and "no_such_task" in (outputs / "summary.csv").read_text(), run.stdout[-2000:]
    assert modes(outputs)["summary.csv"] == 0o644 and modes(outputs)["case1.seg.nrrd"] == seg_mode
    assert_nothing_left(run, outputs)

    import nibabel as nib
    import numpy as np

    mask = np.zeros((40, 40, 40), np.uint8)
    mask[5:35, 18:22, 18:22] = 1
    mask[18:22, 5:35, 20:24] = 1
    vessels = tmp_path / "liver_vessels.nii.gz"
    nib.save(nib.Nifti1Image(mask, np.diag([1.5, 1.5, 1.5, 1])), str(vessels))
    run = run_cli(["split-vessels", "--vessels", vessels, "-o", tmp_path / "split", "-q"], tmp_path,
                  preexec=_umask(0o027))
    assert run.rc == 0, run.stderr[-3000:]
    assert len(list((tmp_path / "split").iterdir())) >= 4
    _assert_modes(tmp_path / "split", 0o027)


def test_weights_downloaded_or_imported_follow_the_umask_and_the_licence_stays_private(model_zip, tmp_path):
    with WeightsServer({f"/{FOLDER}.zip": model_zip.read_bytes()}) as srv:
        runs = run_cli_many([
            ["download-weights", "--fastest", "--mirror", srv.url(), "--weights_dir", tmp_path / "dl"],
            ["import-weights", model_zip, "--weights_dir", tmp_path / "imported"],
            ["set-license", "aca_ABCDEFGHIJ1234"],
        ], tmp_path, preexec=_umask(0o007))
    for run in runs:
        assert run.rc == 0, run.stderr[-3000:]
    _assert_modes(tmp_path / "dl" / FOLDER, 0o007)
    _assert_modes(tmp_path / "imported" / FOLDER, 0o007)
    config = tmp_path / "totalseg-home" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "ABCDEFGHIJ1234" not in runs[2].stdout + runs[2].stderr
    assert_nothing_left(runs[0])
