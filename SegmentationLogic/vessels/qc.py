"""Quality figures and warnings of a portal/hepatic split (the `portal_hepatic_split_qc`).

Keys are those of the published enhanced pipeline (portal_voxels ... use_skeleton) plus
the confidence (mean of the confidence map over labelled voxels), ambiguous voxels (those
the map flags as unsure, below `unsure_below`) and their share of the vessel voxels
(`unsure_fraction`), unlabelled voxels, the seed sources and warnings.
`qc_rows` and `warnings` format them for a table and a panel in the review.
"""
import numpy as np

from .confidence import UNSURE_BELOW, doubtful_warning, is_doubtful_warning, summary

PORTAL, HEPATIC = 1, 2
FRACTION_LOW, FRACTION_HIGH = 0.05, 0.95


def split_qc(labels, vessels, portal_seed_voxels, hepatic_seed_voxels, use_skeleton, confidence=None,
             ambiguous_voxels=None, warnings=(), seeds=None, unsure_fraction=None):
    labels = np.asarray(labels)
    vessels = np.asarray(vessels) > 0
    total = int(vessels.sum())
    portal = int(((labels == PORTAL) & vessels).sum())
    hepatic = int(((labels == HEPATIC) & vessels).sum())
    qc = {
        "portal_voxels": portal,
        "hepatic_voxels": hepatic,
        "total_vessel_voxels": total,
        "portal_fraction": portal / total if total else 0.0,
        "hepatic_fraction": hepatic / total if total else 0.0,
        "portal_seed_voxels": None if portal_seed_voxels is None else int(portal_seed_voxels),
        "hepatic_seed_voxels": None if hepatic_seed_voxels is None else int(hepatic_seed_voxels),
        "use_skeleton": bool(use_skeleton),
        "confidence": None if confidence is None else round(float(confidence), 4),
        "ambiguous_voxels": None if ambiguous_voxels is None else int(ambiguous_voxels),
        "unlabelled_voxels": total - portal - hepatic,
    }
    if unsure_fraction is not None:
        qc["unsure_fraction"] = round(float(unsure_fraction), 4)
        qc["unsure_below"] = UNSURE_BELOW
    if seeds is not None:
        qc["seed_sources"] = dict(seeds.source)
        qc["support"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in seeds.support.items()}
    qc["warnings"] = list(warnings) + fraction_warnings(qc)
    return qc


def fraction_warnings(qc):
    out = []
    if qc["total_vessel_voxels"] == 0:
        return ["The vessel mask is empty."]
    # seed counts are None when unknown (a split loaded without its QC)
    if qc["portal_seed_voxels"] == 0:
        out.append("No portal seed: the portal class has no starting point.")
    if qc["hepatic_seed_voxels"] == 0:
        out.append("No hepatic seed: the hepatic class has no starting point.")
    pf = qc["portal_fraction"]
    if pf < FRACTION_LOW:
        out.append(f"Portal fraction {pf:.1%} is below {FRACTION_LOW:.0%}: the split is probably wrong.")
    elif pf > FRACTION_HIGH:
        out.append(f"Portal fraction {pf:.1%} is above {FRACTION_HIGH:.0%}: the split is probably wrong.")
    return out


def update_qc(qc, labels, vessels, confidence=None, ambiguous_voxels=None):
    """QC after a manual edit: counts recomputed, seed figures and support notes kept."""
    base = {k: v for k, v in (qc or {}).items()}
    warnings = [w for w in base.get("warnings", []) if not _is_fraction_warning(w)]
    new = split_qc(labels, vessels, base.get("portal_seed_voxels"), base.get("hepatic_seed_voxels"),
                   base.get("use_skeleton", True), confidence if confidence is not None else base.get("confidence"),
                   ambiguous_voxels if ambiguous_voxels is not None else base.get("ambiguous_voxels"), warnings)
    for key in ("seed_sources", "support", "unsure_fraction", "unsure_below"):
        if key in base:
            new[key] = base[key]
    new["manual_edits"] = int(base.get("manual_edits", 0))
    return new


def with_confidence(qc, confidence, labels):
    """QC whose confidence figures (confidence, ambiguous_voxels, unsure_fraction, and the warning
    when too much is unsure) describe `confidence`, a map on the grid of `labels` (after a manual
    edit set the edited voxels to 1.0, or after a re-split)."""
    confidence, labels = np.asarray(confidence), np.asarray(labels)
    vessels = confidence > 0  # the map covers exactly the vessel voxels (0.5 where unlabelled)
    mean, flagged, share = summary(confidence[vessels], labels[vessels])
    new = dict(qc or {})
    new.update(confidence=round(mean, 4), ambiguous_voxels=flagged, unsure_fraction=round(share, 4),
               unsure_below=UNSURE_BELOW)
    warnings = [w for w in new.get("warnings", []) if not is_doubtful_warning(w)]
    doubtful = doubtful_warning(share)
    new["warnings"] = ([w for w in warnings if not _is_fraction_warning(w)] + ([doubtful] if doubtful else [])
                       + [w for w in warnings if _is_fraction_warning(w)])  # the split's own order
    return new


def _is_fraction_warning(text):
    return text.startswith(("Portal fraction", "No portal seed", "No hepatic seed", "The vessel mask is empty"))


_ROWS = (
    ("Portal voxels", "portal_voxels", "{:d}"),
    ("Hepatic voxels", "hepatic_voxels", "{:d}"),
    ("Vessel voxels", "total_vessel_voxels", "{:d}"),
    ("Portal fraction", "portal_fraction", "{:.1%}"),
    ("Hepatic fraction", "hepatic_fraction", "{:.1%}"),
    ("Unlabelled voxels", "unlabelled_voxels", "{:d}"),
    ("Confidence", "confidence", "{:.2f}"),
    ("Ambiguous voxels", "ambiguous_voxels", "{:d}"),
    ("Unsure share", "unsure_fraction", "{:.1%}"),
    ("Portal seed voxels", "portal_seed_voxels", "{:d}"),
    ("Hepatic seed voxels", "hepatic_seed_voxels", "{:d}"),
    ("Skeleton used", "use_skeleton", None),
    ("Manual edits", "manual_edits", "{:d}"),
)


def qc_rows(qc):
    """[(label, value text)] for a two-column table; absent figures are left out."""
    rows = []
    for label, key, fmt in _ROWS:
        if key not in qc or qc[key] is None:
            continue
        value = qc[key]
        rows.append((label, ("yes" if value else "no") if fmt is None else fmt.format(value)))
    for cls in ("portal", "hepatic"):
        src = (qc.get("seed_sources") or {}).get(cls)
        if src:
            rows.append((f"{cls.capitalize()} seeds from", src.replace("_", " ")))
    return rows


def warnings(qc):
    """The QC warnings as sentences for the panel (empty list when all is well)."""
    return list((qc or {}).get("warnings", []))
