"""Run every benchmark in this folder, one after the other (`make benchmark`).

Each benchmark measures its reference in the same run and prints ratios; this script
only runs them in turn, with their default settings, and stops with the first failure's
exit code. Benchmarks are not tests: pytest never collects this folder's scripts.

    python Testing/benchmarks/run_all.py [NAME ...]     # e.g. engine vessel_split
"""
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None):
    names = argv if argv is not None else sys.argv[1:]
    scripts = sorted(HERE.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in names]
        if not scripts:
            print(f"no benchmark named {names}; have: {[s.stem[6:] for s in sorted(HERE.glob('bench_*.py'))]}")
            return 2
    for script in scripts:
        print(f"\n===== {script.name} =====", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parents[1])
        print(f"===== {script.name}: exit {rc}, {time.perf_counter() - start:.0f} s =====", flush=True)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
