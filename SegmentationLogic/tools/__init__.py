"""The official tool's extra commands, one module each (`python -m SegmentationLogic <command>`).

info, combine-masks, crop-to-body, get-modality, get-phase, get-body-stats, evans-index and the spine /
aorta / pulmonary reports. Each module has the logic as functions plus `add_command`, which
registers its subcommand (the official `totalseg_*` name without the prefix, with `-` as
the other commands); `add_commands` registers them all on the main parser.
"""
from . import body_stats, combine_masks, crop_to_body, info, modality, phase, reports

MODULES = (info, combine_masks, crop_to_body, modality, phase, body_stats, reports)


def add_commands(sub, common, progress_from_args, emit_result):
    """Register every tool subcommand on the main parser's subparsers."""
    for module in MODULES:
        module.add_command(sub, common, progress_from_args, emit_result)
