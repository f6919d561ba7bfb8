"""Licence key for the licensed TotalSegmentator tasks.

The key lives where the official tool keeps it, so a key set with `totalseg_set_license`
is reused and vice versa: `config.json` in the TotalSegmentator home folder
($TOTALSEG_HOME_DIR, else ~/.totalsegmentator), key "license_number". We keep every
other key of that file, make it readable by the user only (0600), and, when we create
it, write "send_usage_stats": false (this product never sends usage statistics).

The key is a secret: it is never printed, logged or put in an error message. Code that
needs to show it uses `mask_license` ("aca_****...1234").
"""
import json
import re

from ..errors import LicenseError
from ..system.files import write_json
from .locate import totalseg_home

CONFIG_NAME = "config.json"
KEY_FIELD = "license_number"
# The official tool accepts a stored key offline when it has exactly 18 characters
# (keys look like "aca_" + 14 characters).
KEY_LENGTH = 18
_KEY_CHARS = re.compile(r"^[A-Za-z0-9_-]+$")


def config_path(home=None):
    return (home if home is not None else totalseg_home()) / CONFIG_NAME


def mask_license(key):
    """Display form of a key: its prefix up to '_' and its last 4 characters."""
    if not key:
        return ""
    prefix = key.split("_", 1)[0] + "_" if "_" in key[:5] else ""
    return f"{prefix}****...{key[-4:]}" if len(key) > 8 else "****"


def validate_license(key):
    """Return the key stripped of surrounding blanks, or raise LicenseError (key not echoed)."""
    key = (key or "").strip()
    if not key:
        raise LicenseError("No licence key given.", "Pass the key you received by e-mail, e.g. aca_XXXXXXXXXXXXXX.")
    if not _KEY_CHARS.match(key) or len(key) != KEY_LENGTH:
        raise LicenseError(
            f"This does not look like a TotalSegmentator licence key: it has {len(key)} characters"
            f"{' including spaces or symbols' if not _KEY_CHARS.match(key) else ''}; keys have {KEY_LENGTH} "
            f"letters, digits or '_' (e.g. aca_XXXXXXXXXXXXXX).",
            "Copy the whole key from the licence e-mail. Free academic licences: "
            "https://backend.totalsegmentator.com/license-academic/")
    return key


def _read_config(path):
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise LicenseError(f"Cannot read the TotalSegmentator settings file {path}: {type(e).__name__}.",
                           f"Fix or delete {path}, then set the licence key again.") from None
    if not isinstance(data, dict):
        raise LicenseError(f"The TotalSegmentator settings file {path} is not a JSON object.",
                           f"Delete {path}, then set the licence key again.")
    return data


def set_license(key, home=None):
    """Store a licence key (validated) in config.json, readable by the user only; return the path."""
    key = validate_license(key)
    path = config_path(home)
    config = _read_config(path)
    if config is None:
        config = {"send_usage_stats": False}
    config[KEY_FIELD] = key
    try:
        # private and atomic: never a moment where the key sits in a file others can read,
        # never a half-written config
        write_json(config, path, private=True)
    except OSError as e:
        raise LicenseError(f"Cannot write the licence key to {path}: {e.strerror or e}.",
                           "Make that folder writable, or point TOTALSEG_HOME_DIR at a writable folder.") from None
    return path


def read_license(home=None):
    """The stored key (secret: for the download request only), or None."""
    config = _read_config(config_path(home))
    key = (config or {}).get(KEY_FIELD)
    return key.strip() if isinstance(key, str) and key.strip() else None


def get_license(home=None):
    """Masked stored key for display ("aca_****...1234"), or None when none is stored."""
    key = read_license(home)
    return mask_license(key) if key else None


def require_license(license_key=None, home=None):
    """The key to send to the licence server: the one given, else the stored one."""
    key = license_key.strip() if license_key else read_license(home)
    if not key:
        raise LicenseError(
            f"This model needs a TotalSegmentator licence key, and none is stored in {config_path(home)}.",
            "Get one (free for non-commercial use) at https://backend.totalsegmentator.com/license-academic/ "
            "and store it: python -m SegmentationLogic set-license (or the module's 'Licence key' field).")
    return key
