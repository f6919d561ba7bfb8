"""Writing a tool's result atomically (a temporary name until complete): JSON (also to stdout unless
quiet) or a NIfTI image."""
import json


def write_result(result, output, quiet=False):
    from ..outputs import AtomicWriter

    writer = AtomicWriter()
    writer.text(json.dumps(result, indent=4), output)
    writer.commit()
    if not quiet:
        print(json.dumps(result, indent=4))
    return 0


def write_nifti(img, output):
    from ..outputs import AtomicWriter

    writer = AtomicWriter()
    try:
        writer.nifti(img, output)
        return writer.commit()[0]
    except BaseException:
        writer.abort()
        raise
