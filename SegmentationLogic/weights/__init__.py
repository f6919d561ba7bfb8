"""Model weights: where they live, getting them there, and checking them.

    locate    the official folder layout and environment variables (existing weights are reused)
    download  official release URLs, a mirror or the licence server; resumable, atomic install
    install   import from a zip or folder: staged, verified, renamed into place
    verify    what "a usable model" means; loading checkpoints without running code from them
    license   the licence key for licensed tasks (stored 0600, never printed)

Other packages use the names below, never a submodule's private helpers.
"""
from .download import MIRROR_ENV, DownloadLimits, download_models, ensure_models
from .install import import_weights
from .license import get_license, mask_license, read_license, require_license, set_license, validate_license
from .locate import default_weights_dir, folds_of, is_installed, model_dir, resolve_weights_dir, totalseg_home
from .verify import load_checkpoint, verify_dataset_folder, verify_model_folder

__all__ = ["MIRROR_ENV", "DownloadLimits", "default_weights_dir", "download_models", "ensure_models", "folds_of",
           "get_license", "import_weights", "is_installed", "load_checkpoint", "mask_license", "model_dir", "read_license",
           "require_license",
           "resolve_weights_dir", "set_license", "totalseg_home", "validate_license", "verify_dataset_folder",
           "verify_model_folder"]
