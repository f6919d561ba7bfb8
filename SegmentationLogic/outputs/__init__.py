"""What a run leaves behind, and checks on it.

    labelmap    the multilabel image and its label table (the one parser of that table)
    writer      result files written all or nothing (multilabel or one mask per class, sidecar)
    statistics  per-class volume and mean intensity, as the official statistics.json
    evaluation  Dice per class against a reference (`evaluate` command)
    preview     3D preview PNG rendered offscreen with VTK
"""
