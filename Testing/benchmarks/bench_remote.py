"""Remote vs local: what sending a CT to a segmentation server and its labelmap back costs.

On loopback, in one run, on the same image, request and weights:

  local       the engine in this process, warm (models loaded), writing the labelmap
  remote x1   `RemoteSegmenter` to a warm `serve` (TLS + token) on 127.0.0.1: upload, queue,
              the same engine run, result zip back, files written
  remote xN   N clients at once (the server runs one job at a time, in order)

and prints wall times and ratios against the local run measured in the same run, plus the
split of the remote time (upload / engine on the server / fetch). The image is a
512x512x300 CT made by resampling the example CT (int16, .nii.gz, like a scanner export).
Both sides run on this machine, so loopback costs only CPU: over a real network add the
image's size divided by the bandwidth (the printed MB). Test models are used (real weights
cannot be downloaded here): their engine time is far shorter than a real model's, which
makes the printed overhead ratio an upper bound for real runs.

    python Testing/benchmarks/bench_remote.py [--clients 2] [--quality fast] [--shape 512 512 300] [--device cpu]
"""
import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "Testing"), str(REPO / "Testing" / "support")]
os.environ.setdefault("nnUNet_def_n_proc", "1")  # as the server process gets it (serve_process.py): same engine

from SegmentationLogic.request import SegmentRequest  # noqa: E402
from sample_data import example_path  # noqa: E402


def make_ct(path, shape):
    """The example CT resampled (linear) to `shape`, same field of view, int16 .nii.gz."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    src = nib.load(str(example_path("example_ct_sm.nii.gz")))
    data = np.asarray(src.dataobj, dtype=np.float32)
    factors = [n / s for n, s in zip(shape, data.shape)]
    big = ndimage.zoom(data, factors, order=1).astype(np.int16)
    affine = src.affine.copy()
    affine[:3, :3] = affine[:3, :3] / np.array(factors)
    nib.save(nib.Nifti1Image(big, affine), str(path))
    return path


def timed(fn):
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=2, help="clients at once in the last measurement")
    ap.add_argument("--quality", default="fast", choices=["normal", "fast", "fastest"])
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    ap.add_argument("--device", default="cpu", help="the engine's device, here and on the server")
    ap.add_argument("--repeat", type=int, default=3, help="measured runs of local and of remote x1 (median)")
    args = ap.parse_args()

    from serve_process import ServeProcess
    from testmodels import build_test_weights
    from tls_certs import TestCA

    from SegmentationLogic.pipeline import Segmenter
    from SegmentationLogic.server.client import RemoteSegmenter

    weights = build_test_weights()
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        tmp = Path(tmp)
        seconds, ct = timed(lambda: make_ct(tmp / "ct.nii.gz", args.shape))
        mb = ct.stat().st_size / 2**20
        print(f"input: {'x'.join(map(str, args.shape))} int16 CT, {mb:.1f} MB as .nii.gz (made in {seconds:.1f} s); "
              f"task total --{args.quality}, {args.device}, test models", flush=True)

        def request(name):
            return SegmentRequest(input=str(ct), output=str(tmp / name / "seg.nii.gz"), quality=args.quality)

        local = Segmenter(device=args.device, weights_dir=weights, download=False)
        ca = TestCA(tmp / "ca")
        with ServeProcess(tmp / "server", weights, tls=ca.server_cert(tmp / "tls"), ca_cert=ca.cert_path,
                          max_upload_mb=4096, extra=("--device", args.device), timeout=600) as srv:
            remote = RemoteSegmenter(srv.url, token_file=srv.token_file, ca_cert=ca.cert_path, read_timeout=3600)
            local.run(request("warm-local"))  # models loaded on both sides, as in a warm worker
            remote.run(request("warm-remote"))
            local_times, runs = [], []
            for i in range(args.repeat):  # interleaved: a busy spell of the machine hits both alike
                local_times.append(timed(lambda i=i: local.run(request(f"local{i}")))[0])
                runs.append(timed(lambda i=i: remote.run(request(f"remote{i}"))))
            t_local = statistics.median(local_times)
            t_remote = statistics.median(t for t, _ in runs)
            result_mb = (tmp / "local0" / "seg.nii.gz").stat().st_size / 2**20
            t_mid, mid = sorted(runs, key=lambda r: r[0])[len(runs) // 2]  # the median run, split into its parts
            split = {k: mid.timings.get(k, 0.0) for k in ("upload", "total", "fetch")}

            walls, engine = {}, {}

            def client(i):
                walls[i], engine[i] = timed(lambda: remote.run(request(f"many{i}")))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            t_many = time.perf_counter() - start
            assert len(walls) == args.clients, "a client failed"

    overhead = t_mid - split["total"]
    n = args.clients
    print(f"\nlocal (warm engine in this process)   {t_local:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in local_times)})")
    print(f"remote x1 (warm server, TLS)          {t_remote:7.2f} s   ratio remote/local {t_remote / t_local:.2f}   "
          f"(runs: {', '.join(f'{t:.2f}' for t, _ in runs)})")
    print(f"   ratio remote wall / the same job's engine time on the server {t_mid / split['total']:.2f} "
          "(the same run on both sides of the ratio: robust to a busy machine)")
    print(f"   upload {mb:.0f} MB {split['upload']:.2f} s | engine on the server {split['total']:.2f} s | "
          f"result {result_mb:.1f} MB back {split['fetch']:.2f} s | rest (queue, events, zip, files) "
          f"{overhead - split['upload'] - split['fetch']:.2f} s")
    print(f"   transfer overhead {overhead:.2f} s = {overhead / t_local:.2f} x the local run; over a real network "
          f"add about {(mb + result_mb) * 8 / 1000:.1f} s at 1 Gbit/s, {(mb + result_mb) * 8 / 100:.1f} s at 100 Mbit/s")
    busy = sum(r.timings["total"] for r in engine.values())
    print(f"remote x{n} at once (one GPU queue)     {t_many:7.2f} s   ratio to {n} local runs one after the other "
          f"{t_many / (n * t_local):.2f}; to the {n} jobs' engine time on the server {t_many / busy:.2f}; "
          f"mean wait per client {statistics.mean(walls.values()):.2f} s ({statistics.mean(walls.values()) / t_local:.2f}"
          " x local)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
