"""Importing weights from zips and folders: verified, atomic, refusing what is unsafe or broken."""
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch

from model_zips import assert_nothing_half_installed, copy_dataset, installed_datasets, zip_dataset
from SegmentationLogic.catalogue import load_catalogue
from SegmentationLogic.cli import main
from SegmentationLogic.errors import Cancelled, InvalidWeightsError, WeightsFolderError
from SegmentationLogic.pipeline.plan import required_models
from SegmentationLogic.progress import CancelToken, Progress
from SegmentationLogic.weights import import_weights, is_installed, load_checkpoint

CAT = load_catalogue()
A = required_models("total", "fastest")[0]  # Dataset298
B = required_models("total", "fast")[0]  # Dataset297
CKPT = "fold_0/checkpoint_final.pth"


@pytest.fixture
def wdir(tmp_path):
    return tmp_path / "weights"


@pytest.fixture
def model_a(fitted_weights, tmp_path):
    """A private copy of a real test model folder (Dataset298), to damage at will."""
    return copy_dataset(fitted_weights, A.folder, tmp_path / "src")


def refused(path, wdir, *needles):
    with pytest.raises(InvalidWeightsError) as e:
        import_weights(path, weights_dir=wdir)
    for n in needles:
        assert n in str(e.value), str(e.value)
    assert ".install-" not in str(e.value)  # errors name the user's files, not our staging folder
    assert_nothing_half_installed(wdir)
    return e.value


# -- what is accepted --------------------------------------------------------------------------

def test_official_release_zip(fitted_weights, wdir, tmp_path):
    z = zip_dataset(fitted_weights / A.folder, tmp_path / f"{A.folder}.zip")
    events = []
    assert import_weights(z, weights_dir=wdir, progress=Progress(events.append)) == [wdir / A.folder]
    assert is_installed(A, wdir)
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [p.name for p in wdir.iterdir() if p.name.startswith(".install-")] == []


def test_zip_with_top_folder_and_two_datasets(fitted_weights, wdir, tmp_path):
    z = zip_dataset(fitted_weights / A.folder, tmp_path / "bundle.zip", top="totalseg_weights")
    zip_dataset(fitted_weights / B.folder, z, top="totalseg_weights")
    with zipfile.ZipFile(z, "a") as zf:  # macOS Finder litter is ignored
        zf.writestr("__MACOSX/totalseg_weights/._x", b"junk")
    installed = import_weights(z, weights_dir=wdir)
    assert sorted(installed) == sorted([wdir / A.folder, wdir / B.folder])
    assert is_installed(A, wdir) and is_installed(B, wdir)


def test_folders_dataset_model_and_whole_weights_folder(fitted_weights, model_a, wdir, tmp_path):
    before = sorted(p.relative_to(model_a) for p in model_a.rglob("*"))
    assert import_weights(model_a, weights_dir=wdir) == [wdir / A.folder]
    assert sorted(p.relative_to(model_a) for p in model_a.rglob("*")) == before  # source untouched
    # a bare model folder: the dataset is named by its plans.json
    w2 = tmp_path / "w2"
    assert import_weights(fitted_weights / B.folder / B.subdir, weights_dir=w2) == [w2 / B.folder]
    # another installation's whole weights folder
    other = tmp_path / "other_install"
    for m in (A, B):
        copy_dataset(fitted_weights, m.folder, other)
    assert sorted(import_weights(other, weights_dir=tmp_path / "w3")) == sorted(
        [tmp_path / "w3" / A.folder, tmp_path / "w3" / B.folder])


def test_cli_import_weights(fitted_weights, wdir, tmp_path, capsys):
    z = zip_dataset(fitted_weights / A.folder, tmp_path / f"{A.folder}.zip")
    assert main(["import-weights", str(z), "--weights_dir", str(wdir), "-q"]) == 0
    assert capsys.readouterr().out.split() == [str(wdir / A.folder)]
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    assert main(["import-weights", str(bad), "--weights_dir", str(tmp_path / "w2"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ERROR: {bad} is not a valid zip archive") and "Fix:" in err


def test_unknown_dataset_name_is_installed_with_a_warning(fitted_weights, wdir, tmp_path):
    z = zip_dataset(fitted_weights / A.folder, tmp_path / "legacy.zip", rename=A.folder + "_v204")
    events = []
    import_weights(z, weights_dir=wdir, progress=Progress(events.append))
    warnings = [e["message"] for e in events if e["event"] == "log"]
    assert any(f"this version expects {A.folder}" in w for w in warnings)


# -- replacing an installed model ----------------------------------------------------------------

def test_replace_only_after_the_new_one_verified(fitted_weights, model_a, wdir, tmp_path):
    import_weights(fitted_weights / A.folder, weights_dir=wdir)
    installed_ckpt = wdir / A.folder / A.subdir / CKPT
    original = installed_ckpt.read_bytes()
    # an extra model folder of the same dataset must survive any import
    extra = wdir / A.folder / "nnUNetTrainer__nnUNetPlans__3d_lowres"
    shutil.copytree(wdir / A.folder / A.subdir, extra)
    (model_a / A.subdir / CKPT).write_bytes(b"broken")
    refused_error = None
    with pytest.raises(InvalidWeightsError) as refused_error:
        import_weights(model_a, weights_dir=wdir)
    assert "not a readable PyTorch checkpoint" in str(refused_error.value)
    assert installed_ckpt.read_bytes() == original  # the old model is intact
    # a good new version replaces it
    new = torch.load(fitted_weights / A.folder / A.subdir / CKPT, weights_only=False)
    new["current_epoch"] = 4000
    torch.save(new, model_a / A.subdir / CKPT)
    import_weights(model_a, weights_dir=wdir)
    assert load_checkpoint(installed_ckpt)["current_epoch"] == 4000
    assert extra.is_dir() and (extra / CKPT).is_file()
    assert not [p for p in wdir.iterdir() if p.name.startswith(".install-")]


# -- what is refused -------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["../evil.txt", "/tmp/evil_abs.txt", "ok/../../evil.txt", "C:/evil.txt",
                                   "..\\evil.txt"])
def test_zip_slip_is_refused_before_extracting(fitted_weights, wdir, tmp_path, entry):
    z = zip_dataset(fitted_weights / A.folder, tmp_path / "evil.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr(zipfile.ZipInfo(entry), b"owned")
    refused(z, wdir, "refused", repr(entry)[1:-1].replace("\\\\", "\\"), "Nothing was extracted")
    assert not (tmp_path / "evil.txt").exists() and not (wdir.parent / "evil.txt").exists()
    assert installed_datasets(wdir) == []


def test_symlink_entry_is_refused(fitted_weights, wdir, tmp_path):
    z = zip_dataset(fitted_weights / A.folder, tmp_path / "link.zip")
    info = zipfile.ZipInfo(f"{A.folder}/link")
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr(info, "/etc/passwd")
    refused(z, wdir, "symbolic link")


def test_corrupt_zips(fitted_weights, wdir, tmp_path):
    good = zip_dataset(fitted_weights / A.folder, tmp_path / "good.zip", compression=zipfile.ZIP_STORED).read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good[: len(good) // 2])
    refused(truncated, wdir, "is not a valid zip archive", "damaged or incomplete")
    # a flipped byte inside a stored checkpoint: the directory is fine, the CRC is not
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    crc = tmp_path / "crc.zip"
    crc.write_bytes(bytes(flipped))
    refused(crc, wdir, "is damaged")


def test_archive_that_is_not_a_model(wdir, tmp_path):
    z = tmp_path / "photos.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("holiday/readme.txt", "not a model")
    refused(z, wdir, "No nnU-Net model found", "plans.json")


def test_zip_of_a_model_folders_contents(fitted_weights, wdir, tmp_path):
    z = tmp_path / "flat.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in (fitted_weights / A.folder / A.subdir).rglob("*"):
            if p.is_file():
                zf.write(p, p.relative_to(fitted_weights / A.folder / A.subdir).as_posix())
    refused(z, wdir, f"{z} holds a plans.json at its top level", "<trainer>__<plans>__<configuration>")


@pytest.mark.parametrize("damage, needles", [
    ("no_checkpoint", [f"has no {CKPT}"]),
    ("no_plans", ["has no plans.json"]),
    ("bad_json", ["dataset.json is not valid JSON"]),
    ("wrong_config", ["has no configuration '3d_fullres'"]),
    ("no_model_folder", ["holds no model folder"]),
    ("nan", ["NaN or infinite"]),
    ("labels", ["but its dataset.json lists"]),
    ("no_weights", ["holds no network weights"]),
])
def test_broken_model_folders(model_a, wdir, damage, needles):
    m = model_a / A.subdir
    if damage == "no_checkpoint":
        (m / CKPT).unlink()
    elif damage == "no_plans":
        (m / "plans.json").unlink()
    elif damage == "bad_json":
        (m / "dataset.json").write_text("{labels: ")
    elif damage == "wrong_config":
        plans = json.loads((m / "plans.json").read_text())
        plans["configurations"] = {"2d": plans["configurations"]["3d_fullres"]}
        (m / "plans.json").write_text(json.dumps(plans))
    elif damage == "no_model_folder":
        shutil.rmtree(m)
    elif damage == "labels":
        ds = json.loads((m / "dataset.json").read_text())
        ds["labels"]["extra_class"] = len(ds["labels"])
        (m / "dataset.json").write_text(json.dumps(ds))
    else:
        ckpt = torch.load(m / CKPT, weights_only=False)
        if damage == "nan":
            next(iter(ckpt["network_weights"].values())).view(-1)[0] = float("nan")
        else:
            del ckpt["network_weights"]
        torch.save(ckpt, m / CKPT)
    refused(model_a, wdir, *needles)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_checkpoint_that_would_run_code_is_refused(model_a, wdir, tmp_path):
    marker = tmp_path / "code_ran"
    ckpt = torch.load(model_a / A.subdir / CKPT, weights_only=False)
    ckpt["trainer_name"] = _RunsCode(str(marker))
    torch.save(ckpt, model_a / A.subdir / CKPT)
    err = refused(model_a, wdir, "could run code", "mkdir")
    assert not marker.exists(), "the pickle was executed"
    assert "copy its folder into the weights folder by hand" in err.fix


def test_full_nnunet_training_checkpoint_is_accepted(model_a, wdir):
    """What nnU-Net's save_checkpoint writes: optimizer, grad scaler, numpy values in the log, a device.

    Also rewritten with numpy 1's module names, as the released weights were saved."""
    path = model_a / A.subdir / CKPT
    ckpt = torch.load(path, weights_only=False)
    params = [torch.nn.Parameter(t.clone().float()) for t in ckpt["network_weights"].values()]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    sum(p.sum() for p in params).backward()
    opt.step()
    ckpt.update({
        "optimizer_state": opt.state_dict(), "grad_scaler_state": torch.amp.GradScaler("cpu").state_dict(),
        "logging": {"mean_fg_dice": [np.float64(0.8)], "ema_fg_dice": [np.float64(0.79)],
                    "dice_per_class_or_region": [[np.float64(0.7), np.float32(0.9)]],
                    "train_losses": [np.mean(np.array([0.5, 0.4]))], "val_losses": [np.float32(-0.6)],
                    "lrs": [0.01], "epoch_start_timestamps": [1.7e9], "epoch_end_timestamps": [1.7e9 + 60]},
        "_best_ema": np.float64(0.79), "current_epoch": 4000,
        "init_args": {"plans": json.loads((model_a / A.subdir / "plans.json").read_text()),
                      "configuration": "3d_fullres", "fold": 0, "unpack_dataset": True,
                      "dataset_json": json.loads((model_a / A.subdir / "dataset.json").read_text()),
                      "device": torch.device("cuda", 0)},
        "trainer_name": A.trainer, "inference_allowed_mirroring_axes": (0, 1, 2)})
    torch.save(ckpt, path)
    _as_numpy1(path)
    import_weights(model_a, weights_dir=wdir)
    loaded = load_checkpoint(wdir / A.folder / A.subdir / CKPT)
    assert loaded["_best_ema"] == pytest.approx(0.79) and loaded["init_args"]["device"] == torch.device("cuda", 0)


def _as_numpy1(path):
    """Rewrite numpy 2 global names in a checkpoint's pickle to numpy 1's (protocol 2 text globals)."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as zi, zipfile.ZipFile(tmp, "w") as zo:
        for info in zi.infolist():
            data = zi.read(info)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zo.writestr(info, data)
    os.replace(tmp, path)


# -- the weights folder and cancel --------------------------------------------------------------

def test_unwritable_weights_folder(model_a, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(WeightsFolderError) as e:
        import_weights(model_a, weights_dir=blocker / "results")
    assert "Cannot write to the weights folder" in e.value.cause and str(blocker) in e.value.cause
    # (a folder without write permission: test_download.test_read_only_weights_folder)


def test_cancel_during_import_leaves_nothing(fitted_weights, wdir, tmp_path):
    z = zip_dataset(fitted_weights / A.folder, tmp_path / "a.zip")
    zip_dataset(fitted_weights / B.folder, z)
    token = CancelToken()

    def on_event(e):
        if e.get("fraction", 0) > 0.5:  # while verifying the first dataset
            token.cancel()

    with pytest.raises(Cancelled):
        import_weights(z, weights_dir=wdir, progress=Progress(on_event, cancel=token))
    assert_nothing_half_installed(wdir)


def test_staging_left_by_a_killed_process_is_removed(model_a, wdir):
    import subprocess
    import sys

    from SegmentationLogic.weights.install import STAGING_PREFIX, _staging_tag

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = _staging_tag().rsplit("-", 1)[0]
    left = wdir / f"{STAGING_PREFIX}{host}-{dead.stdout.strip()}-abc"  # killed mid-install
    busy = wdir / f"{STAGING_PREFIX}{host}-{os.getpid()}-def"  # a live install (this process)
    remote = wdir / f"{STAGING_PREFIX}otherhost-{dead.stdout.strip()}-ghi"  # another machine's, recent
    for d in (left, busy, remote):
        (d / "unpacked").mkdir(parents=True)
    import_weights(model_a, weights_dir=wdir)
    assert not left.exists() and busy.exists() and remote.exists()


def test_importing_from_inside_the_weights_folder_is_refused(fitted_weights, wdir):
    import_weights(fitted_weights / A.folder, weights_dir=wdir)
    refused_error = pytest.raises(InvalidWeightsError)
    with refused_error as e:
        import_weights(wdir / A.folder, weights_dir=wdir)
    assert "already inside the weights folder" in e.value.cause
