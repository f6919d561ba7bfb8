"""What every command shares: the common flags, progress output and the result event.

With `--progress json` stdout carries only the protocol's JSON events (one per line, see
progress.py); the real stream is kept here and sys.stdout points at stderr while a
command runs, so a stray print from a library cannot break the protocol. Otherwise
progress goes to stderr as short human lines.
"""
import argparse
import contextlib
import json
import sys

from ..progress import Progress, json_lines_writer, text_writer

_EVENT_STREAM = None


def events_stream():
    return _EVENT_STREAM or sys.stdout


@contextlib.contextmanager
def protocol_stdout(json_mode):
    """While a command runs in --progress json mode: events to the real stdout, prints to stderr."""
    global _EVENT_STREAM
    if not json_mode:
        yield
        return
    saved = sys.stdout
    _EVENT_STREAM, sys.stdout = saved, sys.stderr
    try:
        yield
    finally:
        sys.stdout, _EVENT_STREAM = saved, None


class FlagParser(argparse.ArgumentParser):
    """Multi-word flags answer to both spellings: the official `--roi_subset` (the one shown)
    and `--roi-subset`, as the batch script and most tools write them. Tokens are rewritten
    before parsing, so abbreviations and the help stay as they were; subcommands' parsers
    are of this class too (argparse makes them like their parent)."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)
        return super().parse_known_args([self._official(a) for a in args[:end]] + args[end:], namespace)

    def _official(self, token):
        if not token.startswith("--") or "-" not in token[2:]:
            return token
        flag, eq, value = token.partition("=")
        official = "--" + flag[2:].replace("-", "_")
        if flag not in self._option_string_actions and official in self._option_string_actions:
            return official + eq + value
        return token


class VersionAction(argparse.Action):
    """`--version`: the engine's version and the TotalSegmentator release whose results it matches."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "show the engine's version and the TotalSegmentator release it matches")

    def __call__(self, parser, namespace, values, option_string=None):
        from ..version import __version__  # the version and the catalogue: cheap, read only when asked
        from ..catalogue import load_catalogue

        print(f"SegmentationLogic {__version__} (results of TotalSegmentator {load_catalogue().official_version})")
        parser.exit()


def add_common(p):
    p.add_argument("--progress", choices=["text", "json"], default="text",
                   help="json: one JSON event per stdout line (for GUIs and batch runners)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--weights_dir", default=None,
                   help="weights folder (default: $TOTALSEG_WEIGHTS_PATH or $TOTALSEG_HOME_DIR/nnunet/results "
                        "or ~/.totalsegmentator/nnunet/results, as the official tool)")


def add_quality_flags(p, with_help=True):
    """The official --fast / --fastest (request.quality_from_flags turns them into a quality)."""
    p.add_argument("-f", "--fast", action="store_true", help="3 mm model" if with_help else None)
    p.add_argument("-ff", "--fastest", action="store_true", help="6 mm model" if with_help else None)


def json_mode(args):
    return getattr(args, "progress", "text") == "json"


def progress_from_args(args):
    if json_mode(args):
        return Progress(json_lines_writer(events_stream()))
    if getattr(args, "quiet", False):
        return Progress(None)
    return Progress(text_writer())


def emit(event):
    out = events_stream()
    out.write(json.dumps(event, default=str) + "\n")
    out.flush()


def emit_result(args, payload):
    if json_mode(args):
        emit({"event": "result", **payload})


def print_paths(args, paths):
    """The written files, one per line, for humans (json mode has them in the result event)."""
    if not json_mode(args):
        for p in paths:
            print(p)
