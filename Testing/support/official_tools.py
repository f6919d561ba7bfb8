"""Run the official tool's extra commands (their Python functions) in a subprocess, offline.

    OfficialTools(cases, weights_dir, workdir).results() -> [result per case]

The subprocess starts with the object and runs in the background until `results()` is asked for.

A case is {"tool": "combine_masks" | "registry" | "crop_to_body" | "get_modality" | "get_phase", ...}:
- combine_masks: "input", "masks", "multilabel", "output" (the official libs.combine_masks, saved);
- registry: the official registry.task_registry();
- crop_to_body: "input", "output", "only_trunc" (the official command's main, on the CPU);
- get_modality: "input"; "classifier_dir" (optional) replaces the folder the official command
  reads its classifier files from (it has no option for that), so both tools use one file;
- get_phase: "input", "model_file", "existing_stats" (optional): the official
  get_ct_contrast_phase generator, run to its end on the CPU.
Results are JSON (the output path for combine_masks).
"""
import json
import subprocess
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve()


class OfficialTools:
    """The cases run in one background subprocess (started here); `results()` waits for it."""

    def __init__(self, cases, weights_dir, workdir, timeout=1200):
        from reference import make_home, oracle_env

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "cases.json").write_text(json.dumps(cases))
        self.out, self.log, self.timeout = workdir / "results.json", workdir / "official_tools.log", timeout
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, str(HERE), str(workdir / "cases.json"), str(self.out)],
                                         env=oracle_env(weights_dir, make_home(workdir)), stdout=f,
                                         stderr=subprocess.STDOUT, cwd=workdir)
        self._results = None

    def results(self):
        if self._results is None:
            try:
                code = self.proc.wait(self.timeout)
            finally:
                self.close()
            if code:
                raise RuntimeError(f"official tools runner failed ({code}):\n{self.log.read_text()[-4000:]}")
            self._results = json.loads(self.out.read_text())
        return self._results

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _run(case):
    tool = case["tool"]
    if tool == "combine_masks":
        import nibabel as nib
        from totalsegmentator.libs import combine_masks

        nib.save(combine_masks(Path(case["input"]), case["masks"], multilabel=case.get("multilabel", False)),
                 case["output"])
        return case["output"]
    if tool == "registry":
        from totalsegmentator.registry import task_registry

        return task_registry()
    if tool == "get_modality":
        import nibabel as nib
        from totalsegmentator.bin import totalseg_get_modality as mod

        files = mod.importlib.resources.files
        if case.get("classifier_dir"):
            folder = Path(case["classifier_dir"])
            mod.importlib.resources.files = lambda package: folder  # noqa: E731 - where its files are read from
        try:
            return mod.get_modality(nib.load(case["input"]))
        finally:
            mod.importlib.resources.files = files
    if tool == "crop_to_body":
        from totalsegmentator.bin import crop_to_body

        argv = sys.argv
        sys.argv = ["crop_to_body", "-i", case["input"], "-o", case["output"], "-d", "cpu", "-q"] + \
            (["-t"] if case.get("only_trunc") else [])
        try:
            crop_to_body.main()
        finally:
            sys.argv = argv
        return case["output"]
    if tool == "get_phase":
        from totalsegmentator.bin.totalseg_get_phase import get_ct_contrast_phase

        stats = json.loads(Path(case["existing_stats"]).read_text()) if case.get("existing_stats") else None
        final = None
        for event in get_ct_contrast_phase(Path(case["input"]), f_type="niigz", model_file=Path(case["model_file"]),
                                           quiet=True, device="cpu", existing_stats=stats):
            final = event
        return final["result"]
    raise ValueError(f"unknown tool {tool}")


def main(cases_file, results_file):
    from reference import PRIMUS_MODULE, nnunet_in_process

    sys.modules[PRIMUS_MODULE] = types.ModuleType(PRIMUS_MODULE)  # before nnunetv2 (timm -> torchvision)
    nnunet_in_process()  # nnU-Net's preprocessing and export in this process (reference.py says why)
    results = [_run(case) for case in json.loads(Path(cases_file).read_text())]
    Path(results_file).write_text(json.dumps(results))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main(sys.argv[1], sys.argv[2])
