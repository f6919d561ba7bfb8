"""Writing a tool's JSON result: atomically to the output file, and to stdout unless quiet."""
import json


def write_result(result, output, quiet=False):
    from ..outputs import AtomicWriter

    writer = AtomicWriter()
    writer.text(json.dumps(result, indent=4), output)
    writer.commit()
    if not quiet:
        print(json.dumps(result, indent=4))
    return 0
