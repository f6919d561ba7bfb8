"""The official tool's extra commands, one module per command (`python -m SegmentationLogic <command>`).

    info           the task registry as tables or JSON (also `list-tasks`, `classes`, `segment -lt/-lc`)
    combine_masks  one mask from several classes (e.g. the lung from its lobes)
    crop_to_body   the image cut down to the body (6 mm body model)
    modality       CT or MR from the intensities (the official XGBoost classifier)
    phase          the contrast phase of a CT (organ intensities -> the official regressors)
    body_stats     weight, height, age, sex (licensed: says what is missing)
    reports        Evans index and the spine / aorta / pulmonary reports
    classifiers    the official classifier files: located, downloaded and checked
    results        a tool's JSON or NIfTI result, written atomically
    cli            the commands' flags (imports the modules above only when a command runs)
"""
