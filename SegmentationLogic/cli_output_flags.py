"""The `segment` flags for output types and statistics options (official names and short forms)."""


def add_output_flags(parser):
    parser.add_argument("-ot", "--output_type", nargs="+", default=None, metavar="TYPE",
                        help="nifti (default), dicom_seg, dicom_rtstruct; several at once (space or comma "
                             "separated). DICOM outputs need a DICOM input; with one DICOM type -o is the file")
    parser.add_argument("-sx", "--statistics_extra", action="store_true",
                        help="statistics also give n_voxels, intensity std/min/max, centroid_vox and bbox_vox")
    parser.add_argument("-sa", "--stats_aggregation", choices=["mean", "median"], default="mean",
                        help="intensity statistic per class (default: mean)")
    parser.add_argument("-sii", "--stats_include_incomplete", action="store_true",
                        help="statistics also for classes that touch the image border (cut off; excluded by default)")


def output_options(args):
    """Keyword arguments of `pipeline.segment` from the flags above."""
    from .dicom_output import normalize_output_types

    return dict(output_types=normalize_output_types(args.output_type), statistics_extra=args.statistics_extra,
                stats_aggregation=args.stats_aggregation, stats_include_incomplete=args.stats_include_incomplete)
