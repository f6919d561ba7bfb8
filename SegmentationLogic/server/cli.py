"""`python -m SegmentationLogic serve`, and `segment --server URL` (added to the main CLI).

`serve` checks everything that can be wrong with its settings (address, TLS files, token)
before it imports the engine, so a refusal is immediate; then it loads the engine and
serves until SIGTERM/Ctrl+C, when running jobs are stopped, their clients told why, and
every job folder deleted.
"""
import logging
import os
import signal
import ssl
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from ..errors import SegmentationError
from .protocol import DEFAULT_PORT, is_loopback
from .tokens import TOKEN_ENV, TokenChecker, read_tokens, token_from, write_token_file


class ServerConfigError(SegmentationError):
    """`serve` was started with settings it refuses (no TLS off loopback, no token, missing files)."""

    kind = "server"


class ServeConfig:
    def __init__(self, args):
        self.host, self.port = args.host, args.port
        self.max_upload_bytes = int(args.max_upload_mb * 2**20)
        self.device, self.weights_dir, self.download = args.device, args.weights_dir, not args.no_download
        self.timeout, self.max_jobs = args.timeout, args.max_jobs
        self.tls_cert, self.tls_key = args.tls_cert, args.tls_key
        self.jobs_dir = Path(args.jobs_dir) if args.jobs_dir else Path(tempfile.gettempdir()) / (
            f"totalseg-server-{os.getuid() if hasattr(os, 'getuid') else 'user'}")


def check_settings(args):
    """The tokens to accept; ServerConfigError for every setting `serve` refuses."""
    for name in ("max_upload_mb", "timeout", "max_jobs"):
        if getattr(args, name, 1) <= 0:
            raise ServerConfigError(f"--{name} must be more than 0.", f"Give a positive --{name}.")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ServerConfigError("TLS needs both a certificate (--tls_cert) and its private key (--tls_key).",
                                "Give both files.")
    for name in ("tls_cert", "tls_key"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            raise ServerConfigError(f"--{name}: file not found: {path}", "Check the path.")
    tokens = read_tokens(args.token_file) if args.token_file else (
        [token_from()] if os.environ.get(TOKEN_ENV, "").strip() else [])
    local = is_loopback(args.host)
    if not args.insecure:
        if not tokens:
            raise ServerConfigError(
                "The server needs an access token: without one, anyone who can reach it can use it.",
                f"Make one with --generate_token FILE and start with --token_file FILE (or set {TOKEN_ENV}); "
                "--insecure allows a server without a token.")
        if not local and not args.tls_cert:
            raise ServerConfigError(
                f"Refusing to listen on {args.host} (not a loopback address) without TLS: the images, results and "
                "the token would cross the network in clear text.",
                "Give the certificate your organisation issued for this machine with --tls_cert and --tls_key, "
                "or listen on 127.0.0.1 (and reach it through an SSH tunnel); --insecure overrides this check.")
    elif not local and not (tokens and args.tls_cert):
        print("WARNING: --insecure: listening on a network address without "
              f"{'a token' if not tokens else 'TLS'}; anyone on the network can read or use this server.",
              file=sys.stderr)
    return tokens


def cmd_serve(args):
    if args.generate_token:
        if Path(args.generate_token).expanduser().exists():
            raise ServerConfigError(f"{args.generate_token} exists already; it is not overwritten.",
                                    "Give a new file name, or delete the old token file first.")
        path = write_token_file(args.generate_token)
        print(f"New token written to {path} (readable by you only). Give it to the server's users over a "
              "channel you trust; start the server with --token_file.", file=sys.stderr)
        return 0
    tokens = check_settings(args)
    config = ServeConfig(args)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(message)s")
    # the engine (torch, nnU-Net): imported now that the settings are checked, so the first job starts warm
    from ..pipeline import Segmenter
    from .jobs import JobQueue

    queue = JobQueue(config.jobs_dir, lambda: Segmenter(device=config.device, weights_dir=config.weights_dir,
                                                         download=config.download),
                     timeout=config.timeout, max_jobs=config.max_jobs).start()
    try:
        return _run_uvicorn(queue, TokenChecker(tokens), config, args.log_level)
    finally:
        queue.shut_down("The server stopped.")
        queue.close()


def _run_uvicorn(queue, checker, config, log_level):
    import uvicorn  # the server's own dependencies (the `server` extra): only `serve` needs them

    from .app import create_app  # FastAPI

    def tls_context(cfg, default_factory):
        ctx = default_factory()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # a signal handler runs between two bytecodes of the event loop: the queue's lock may be
            # held right here, so the jobs are stopped from a thread of their own
            threading.Thread(target=queue.shut_down, args=("The server is shutting down.",), daemon=True).start()
            super().handle_exit(sig, frame)

    uv_config = uvicorn.Config(
        create_app(queue, checker, config), host=config.host, port=config.port, log_level=log_level,
        server_header=False, proxy_headers=False, timeout_graceful_shutdown=5,
        limit_concurrency=max(32, 4 * config.max_jobs),
        ssl_certfile=config.tls_cert, ssl_keyfile=config.tls_key,
        ssl_context_factory=tls_context if config.tls_cert else None)
    Server(uv_config).run()
    return 0


# -- the client side of the CLI ------------------------------------------------------------------

@contextmanager
def sigterm_interrupts():
    """SIGTERM acts like Ctrl+C while a remote run waits, so the server's job is cancelled and nothing is left."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt()

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_commands(sub):
    """Register `serve`, and `--server/--token_file/--ca_cert` on `segment` (cli/segment.py then runs it
    with a RemoteSegmenter)."""
    seg = sub.choices["segment"]
    g = seg.add_argument_group("remote processing (run on a segmentation server; needs no PyTorch here)")
    g.add_argument("--server", default=None, metavar="URL",
                   help="segment on this server (https://host:port) instead of this machine")
    g.add_argument("--token_file", default=None,
                   help=f"file holding the server's access token (else ${TOKEN_ENV}, else "
                        "~/.totalsegmentator/server_token)")
    g.add_argument("--ca_cert", default=None,
                   help="CA certificate (PEM) that signed the server's certificate, when it is not a public one")

    p = sub.add_parser("serve", help="segmentation server: clients send images over HTTPS and get labelmaps back",
                       description="Serve segmentations over HTTP(S) to `segment --server` and the Slicer module's "
                                   "'Remote server' device: one warm engine, jobs queued, progress streamed.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--token_file", default=None,
                   help=f"file with the access token(s), one per line, readable by the server's user only "
                        f"(else ${TOKEN_ENV})")
    p.add_argument("--generate_token", default=None, metavar="FILE",
                   help="write a new random token to FILE (mode 600) and exit")
    p.add_argument("--tls_cert", default=None, help="TLS certificate (PEM, with its chain)")
    p.add_argument("--tls_key", default=None, help="the certificate's private key (PEM)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a network address without TLS or a server without a token (not recommended)")
    p.add_argument("--max_upload_mb", type=float, default=1024.0, help="largest image accepted (MB, default 1024)")
    p.add_argument("--max_jobs", type=int, default=16, help="jobs queued or running at once (default 16)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds before a job nobody listens to, or a result nobody fetches, is deleted (default 60)")
    p.add_argument("--jobs_dir", default=None,
                   help="folder for the jobs' files (default: a private folder in the temp folder)")
    p.add_argument("-d", "--device", default="auto", help="auto, cpu, cuda, cuda:N, gpu, gpu:N or mps")
    p.add_argument("--weights_dir", default=None, help="weights folder (default as for segment)")
    p.add_argument("--no_download", action="store_true", help="never download weights; jobs needing missing ones fail")
    p.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_serve)
    return sub
