"""Cohorts: thousands of scans on Ray (an existing distributed engine), resumable.

    cases     which entries of a folder are cases (shared with the Slicer batch script);
              the CSV manifest (case id, input path, per-case options)
    manifest  the output manifest: one JSON line per case (status, seconds, cause and fix,
              outputs with SHA-256, engine and model versions); what a rerun may skip
    actor     CaseRunner: a warm engine (Segmenter) that segments one case at a time
    runner    the driver: local Ray or a cluster, a pool of actors, retries, signals
    cli       `python -m SegmentationLogic cohort`

Ray is an optional dependency (`pip install "totalsegmentator-slicer[cohort]"`): only
`runner` imports it, on first use, so Slicer never needs it.
"""
