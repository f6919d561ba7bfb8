"""Licence key: stored where the official tool keeps it, private, validated, never shown."""
import io
import json
import logging
import stat

import pytest

from SegmentationLogic.cli import main
from SegmentationLogic.errors import LicenseError
from SegmentationLogic.weights.license import get_license, mask_license, read_license, set_license

KEY = "aca_SECRET98765432"


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "totalseg_home"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(h))
    return h


def test_new_config_is_private_and_sends_no_statistics(home):
    path = set_license(KEY)
    assert path == home / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"send_usage_stats": False, "license_number": KEY}
    assert read_license() == KEY and get_license() == "aca_****...5432"
    assert [p.name for p in home.iterdir()] == ["config.json"]  # no temporary file left


def test_existing_official_config_keeps_its_keys(home):
    home.mkdir()
    official = {"totalseg_id": "totalseg_abc", "send_usage_stats": True, "prediction_counter": 7,
                "license_number": "aca_OLDKEY00000000"}
    (home / "config.json").write_text(json.dumps(official))
    (home / "config.json").chmod(0o644)
    set_license(f"  {KEY}\n")  # pasted with blanks
    data = json.loads((home / "config.json").read_text())
    assert data == {**official, "license_number": KEY}
    assert stat.S_IMODE((home / "config.json").stat().st_mode) == 0o600


@pytest.mark.parametrize("bad", ["aca_short", "aca_SECRET98765432X", "aca_SECRET 8765432", ""])
def test_invalid_keys_are_refused_without_echoing_them(home, bad):
    with pytest.raises(LicenseError) as e:
        set_license(bad)
    if bad:
        assert bad not in str(e.value)
    assert "18" in e.value.cause or "No licence key" in e.value.cause
    assert not (home / "config.json").exists()


def test_unreadable_config_is_a_clear_error(home):
    home.mkdir()
    (home / "config.json").write_text("{not json")
    with pytest.raises(LicenseError) as e:
        set_license(KEY)
    assert "Cannot read the TotalSegmentator settings file" in e.value.cause and "config.json" in e.value.fix
    assert get_license.__doc__  # documented for the GUI


def test_mask():
    assert mask_license(KEY) == "aca_****...5432"
    assert mask_license("XYZ1234567890ABCDE") == "****...BCDE"
    assert mask_license(None) == ""


def test_cli_set_license_never_prints_the_key(home, capfd, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    assert main(["set-license", KEY]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(KEY.replace("5432", "0000") + "\n"))
    assert main(["set-license"]) == 0  # from stdin: out of the shell history
    assert read_license() == KEY.replace("5432", "0000")
    assert main(["set-license", "aca_nope"]) == 1
    out = capfd.readouterr()
    seen = out.out + out.err + caplog.text
    assert "aca_****...5432" in seen and "aca_****...0000" in seen and "readable by you only" in seen
    assert "ERROR: This does not look like a TotalSegmentator licence key" in out.err
    assert KEY not in seen and KEY.replace("5432", "0000") not in seen and "aca_nope" not in seen
