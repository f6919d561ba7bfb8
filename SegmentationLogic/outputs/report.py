"""`--report PATH`: a machine-readable JSON manifest of a run, with the official tool's fields.

Software versions (TotalSegmentator release whose results this engine matches, nnU-Net,
torch), the resolved device (cpu / gpu / mps), the task, its modality and licence flag,
the options that decide the result, the classes (limited to roi_subset), the runtime and
the .nii.gz files in the output folder. Added: `engine_version` and the test-model note.
"""
import importlib.metadata
from pathlib import Path

from ..version import __version__
from ..catalogue import load_catalogue

NOT_INSTALLED = None


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def device_name(device):
    """The official report's device: 'gpu' for CUDA, else the torch device type."""
    kind = getattr(device, "type", str(device))
    return "gpu" if kind == "cuda" else kind


def run_report(request, plan, result, device, ml, runtime_seconds):
    """The report dict of a finished run, or None when the request asks for none."""
    if request.report is None:
        return None
    spec = plan.spec
    classes = {k: v for k, v in spec.classes.items() if plan.roi_subset is None or v in plan.roi_subset}
    output = None if request.output is None else Path(request.output).absolute()
    types = list(request.output_types)
    return {
        "totalsegmentator_version": load_catalogue().official_version,
        "nnunetv2_version": _version("nnunetv2"),
        "torch_version": _version("torch"),
        "task": spec.name,
        "modality": spec.modality,
        "license_required": spec.licensed,
        "device": device_name(device),
        "fast": request.quality == "fast",
        "fastest": request.quality == "fastest",
        "save_lowres": plan.save_lowres,
        "multilabel": request.ml,
        "output_type": types[0] if len(types) == 1 else types,
        "roi_subset": request.roi_subset,
        "input": "Nifti1Image" if not isinstance(request.input, (str, Path)) else str(Path(request.input).absolute()),
        "output": None if output is None else str(output),
        "num_classes": len(classes),
        "classes": {str(k): v for k, v in classes.items()},
        "runtime_seconds": round(runtime_seconds, 2),
        "output_files": sorted(p.name for p in output.glob("*.nii.gz")) if output is not None and output.is_dir()
        else [],
        "engine_version": __version__,
        **({"note": result.model_note} if result.model_note else {}),
    }
