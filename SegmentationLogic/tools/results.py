"""Writing a tool's result atomically (a temporary name until complete): JSON (also printed unless
quiet) or a NIfTI image."""
import json

from ..outputs.writer import AtomicWriter


def write_result(result, output, quiet=False):
    writer = AtomicWriter()
    try:
        writer.text(json.dumps(result, indent=4), output)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    if not quiet:
        print(json.dumps(result, indent=4))
    return 0


def write_nifti(img, output):
    writer = AtomicWriter()
    try:
        writer.nifti(img, output)
        return writer.commit()[0]
    except BaseException:
        writer.abort()
        raise
