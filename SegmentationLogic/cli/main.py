"""Command line: `python -m SegmentationLogic <command> ...`.

Flags follow the official TotalSegmentator CLI where they overlap, so scripts carry over.
With `--progress json` every event is one JSON object per stdout line (see progress.py);
otherwise progress goes to stderr as short human lines. Errors end with exit code 1 and a
cause + fix message (or an `error` event), never a traceback, unless `--debug`. A file
fault nobody anticipated (an OSError: permissions, full or read-only disk, a folder
where a file should be) still gets a cause and fix from its errno.

Stopping: Ctrl+C (SIGINT), SIGTERM and SIGHUP all stop a command the same way
(system/signals.py): partial output files and temporary folders are removed, one line
says so, and the exit code is 128 + the signal number: 130 (SIGINT, also a Cancel),
143 (SIGTERM), 129 (SIGHUP).
"""
import sys
import traceback

from ..errors import Cancelled, SegmentationError, error_event
from ..cohort.cli import add_commands as add_cohort_commands
from ..server.cli import add_commands as add_server_commands
from ..system.files import file_error
from ..system.signals import exit_code, stop_on_signals
from ..tools.cli import add_commands as add_tool_commands
from ..vessels.cli import add_commands as add_vessel_commands
from . import evaluate, segment, tasks, weights, worker
from .common import FlagParser, VersionAction, add_common, emit, emit_result, json_mode, progress_from_args, protocol_stdout

EXIT_ERROR = 1
EXIT_CANCELLED = 130


def build_parser():
    ap = FlagParser(prog="python -m SegmentationLogic",
                    description="TotalSegmentator-exact segmentation on nnU-Net v2.",
                    epilog="Multi-word flags may also be written with hyphens: --roi-subset, --weights-dir, ...")
    ap.add_argument("--version", action=VersionAction)
    sub = ap.add_subparsers(dest="command", required=True)
    segment.add_parser(sub)
    weights.add_parsers(sub)
    worker.add_parser(sub)
    tasks.add_parsers(sub)
    evaluate.add_parser(sub)
    add_vessel_commands(sub, add_common, progress_from_args, emit_result)  # liver-vessels, split-vessels
    add_server_commands(sub)  # serve; segment --server/--token_file/--ca_cert
    add_cohort_commands(sub, add_common, progress_from_args, emit_result)  # cohort (Ray)
    add_tool_commands(sub, add_common, progress_from_args)  # info, combine-masks, get-phase, ... (official totalseg_*)
    return ap


def _report_error(args, event):
    if json_mode(args):
        emit(event)
    else:
        print(f"ERROR: {event['cause']}", file=sys.stderr)
        if event.get("fix"):
            print(f"  Fix: {event['fix']}", file=sys.stderr)


def main(argv=None):
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    with protocol_stdout(json_mode(args)), stop_on_signals():
        try:
            return args.func(args)
        except SegmentationError as e:
            if debug:
                traceback.print_exc(file=sys.stderr)
            _report_error(args, error_event(e))
            return EXIT_CANCELLED if isinstance(e, Cancelled) else EXIT_ERROR
        except KeyboardInterrupt as e:  # Ctrl+C, SIGTERM, SIGHUP (Terminated)
            if debug:
                traceback.print_exc(file=sys.stderr)
            _report_error(args, error_event(e))
            return exit_code(e)
        except OSError as e:  # a file fault no check caught: cause and fix from its errno
            if debug:
                traceback.print_exc(file=sys.stderr)
            _report_error(args, error_event(file_error(e, reading=None)))
            return EXIT_ERROR
        except Exception as e:  # noqa: BLE001 - a bug: still one error event, the traceback with --debug
            if debug:
                traceback.print_exc(file=sys.stderr)
            _report_error(args, error_event(e))
            return EXIT_ERROR
