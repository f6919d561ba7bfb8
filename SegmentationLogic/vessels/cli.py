"""`python -m SegmentationLogic liver-vessels` and `split-vessels` (added to the main CLI).

Options follow the published enhanced liver-vessel pipeline, so users' scripts carry over.
"""
import sys


def _print_qc(args, qc, files):
    from .qc import qc_rows, warnings  # numpy: imported when a vessel command runs

    if getattr(args, "progress", "text") == "json":
        return
    for f in files:
        print(f)
    if qc:
        for label, value in qc_rows(qc):
            print(f"{label:<22} {value}", file=sys.stderr)
        for w in warnings(qc):
            print(f"WARNING: {w}", file=sys.stderr)


def cmd_split_vessels(args, progress_from_args, emit_result):
    from .workflow import split_vessel_files  # scikit-image and scipy (seconds): only when this command runs

    res = split_vessel_files(args.vessels, args.output, liver=args.liver, portal_trunk=args.portal_trunk,
                             ivc=args.ivc, use_skeleton=not args.no_skeleton,
                             min_component_size=args.min_split_component_size, labeled_only=args.labeled_only,
                             portal_points_ras=_points(args.portal_point), hepatic_points_ras=_points(args.hepatic_point),
                             progress=progress_from_args(args))
    files = [str(f) for f in res["files"]]
    emit_result(args, {"files": files, "qc": res["qc"]})
    _print_qc(args, res["qc"], files)
    return 0


def cmd_liver_vessels(args, progress_from_args, emit_result):
    from .workflow import run_liver_vessels  # scikit-image and scipy (seconds): only when this command runs

    res = run_liver_vessels(
        args.input, args.output, mode=args.mode, liver_mask=args.liver_mask, robust_crop=args.robust_crop,
        device=args.device, min_component_size=args.min_component_size,
        no_fallback_full_liver=args.no_fallback_full_liver, split_portal_hepatic=args.split_portal_hepatic,
        split_support_dir=args.split_support_dir, generate_split_support=args.generate_split_support,
        skip_main_body_veins=args.skip_main_body_veins, no_skeleton=args.no_skeleton,
        min_split_component_size=args.min_split_component_size, labeled_only=args.labeled_only,
        remove_enhanced_binary=args.remove_enhanced_binary, weights_dir=args.weights_dir,
        progress=progress_from_args(args), check_modality=not args.ignore_modality)
    emit_result(args, {"files": res["files"], "qc": res["qc"], "note": res["note"]})
    _print_qc(args, res["qc"], res["files"])
    if res.get("note") and args.progress != "json":
        print(f"NOTE: {res['note']}", file=sys.stderr)
    return 0


def _points(values):
    if not values:
        return None
    return [[float(v) for v in p] for p in values]


def _split_options(p):
    p.add_argument("--no_skeleton", action="store_true",
                   help="split on voxels (radius watershed) instead of the vessel skeleton graph")
    p.add_argument("--min_split_component_size", type=int, default=20,
                   help="per class, smaller pieces join the class around them or are dropped (voxels)")
    p.add_argument("--labeled_only", action="store_true",
                   help="write only liver_vessels_labeled.nii.gz (1 portal, 2 hepatic)")


def add_commands(sub, common, progress_from_args, emit_result):
    """Register both subcommands on the main parser's subparsers."""
    p = sub.add_parser("liver-vessels", help="liver vessels: enhancement and portal/hepatic split of a CT",
                       description="Enhanced liver-vessel pipeline: liver_vessels restricted to the liver, small "
                                   "pieces removed, optionally split into portal vein branches and hepatic veins.")
    p.add_argument("-i", "--input", required=True, help="CT image (NIfTI)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--mode", choices=["enhanced_liver", "liver_vessels_only", "standard"], default="enhanced_liver")
    p.add_argument("--liver_mask", default=None, help="liver mask to use instead of segmenting the liver")
    p.add_argument("--robust_crop", action="store_true", help="use the 3 mm model for cropping")
    p.add_argument("-d", "--device", default="auto", help="auto, cpu, cuda, cuda:N, gpu, gpu:N or mps")
    p.add_argument("--ignore_modality", action="store_true", help="run even when the volume does not look like CT")
    p.add_argument("--min_component_size", type=int, default=40, help="remove vessel pieces below this (voxels)")
    p.add_argument("--no_fallback_full_liver", action="store_true",
                   help="fail instead of using the whole volume when no liver mask is available")
    p.add_argument("--split_portal_hepatic", action="store_true",
                   help="split into portal_vein_branches.nii.gz and hepatic_veins.nii.gz")
    p.add_argument("--split_support_dir", default=None,
                   help="folder with portal_vein_and_splenic_vein.nii.gz and inferior_vena_cava.nii.gz")
    p.add_argument("--generate_split_support", action="store_true",
                   help="segment the portal trunk and IVC when the support files are missing")
    p.add_argument("--skip_main_body_veins", action="store_true",
                   help="do not segment the portal trunk and IVC up front (the liver still is, if missing)")
    _split_options(p)
    p.add_argument("--remove_enhanced_binary", action="store_true",
                   help="with --labeled_only: delete enhanced_liver_vessels.nii.gz after the split")
    common(p)
    p.set_defaults(func=lambda a: cmd_liver_vessels(a, progress_from_args, emit_result))

    p = sub.add_parser("split-vessels", help="split an existing liver-vessel mask into portal and hepatic veins",
                       description="Portal/hepatic split of masks you already have; liver, portal trunk and IVC are "
                                   "optional (without them the split falls back on anatomy and warns).")
    p.add_argument("--vessels", required=True, help="liver-vessel mask (NIfTI)")
    p.add_argument("--liver", default=None, help="liver mask")
    p.add_argument("--portal_trunk", default=None, help="portal trunk mask (portal_vein_and_splenic_vein)")
    p.add_argument("--ivc", default=None, help="inferior vena cava mask")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--portal_point", nargs=3, action="append", metavar=("R", "A", "S"),
                   help="a point (RAS mm) on a portal branch, used as an extra seed; repeatable")
    p.add_argument("--hepatic_point", nargs=3, action="append", metavar=("R", "A", "S"),
                   help="a point (RAS mm) on a hepatic vein, used as an extra seed; repeatable")
    _split_options(p)
    common(p)
    p.set_defaults(func=lambda a: cmd_split_vessels(a, progress_from_args, emit_result))
    return sub

