"""Run the official `get_basic_statistics` on labelmaps, in a subprocess (reference only).

Usage: python official_statistics.py CASES.json
CASES.json: [{"seg": path, "ct": path, "task": name, "roi_subset": [..]|null, "metric": "mean"|"median",
              "exclude_masks_at_border": bool, "extra_metrics": bool, "out": path}]
Each case's statistics.json is written to "out" by the official function itself.
"""
import json
import sys


def main(cases_file):
    import nibabel as nib
    import numpy as np
    from totalsegmentator.statistics import get_basic_statistics

    for case in json.load(open(cases_file)):
        seg = np.asanyarray(nib.load(case["seg"]).dataobj)
        get_basic_statistics(seg, nib.load(case["ct"]), case["out"], quiet=True, task=case["task"],
                             exclude_masks_at_border=case["exclude_masks_at_border"], roi_subset=case["roi_subset"],
                             metric=case["metric"], extra_metrics=case["extra_metrics"])


if __name__ == "__main__":
    main(sys.argv[1])
