"""Regenerate Resources/tasks.json from the facts of an installed TotalSegmentator.

Developer tool, not part of the product: the product reads only Resources/tasks.json.
It copies facts (task names, dataset ids and folders, release tags, trainers, spacings,
crop rules, class maps) into our own data format, resolving the official rules once
(sub-mode fallbacks, the 20 mm crop addon, which crop model a task uses) so that the
engine does not have to re-derive them. `Testing/engine/test_catalogue.py` checks the result
against the installed reference package, so a new TotalSegmentator release shows up
as a failing test rather than a silent drift.

    python Testing/tools/make_task_catalogue.py            # writes Resources/tasks.json
"""
import json
import sys
from pathlib import Path

from totalsegmentator import map_to_binary as m2b
from totalsegmentator.map_tasks_config import DEFAULT_CONFIG, TASK_CONFIGS, TASK_ID_WEIGHTS_CONFIGS
from totalsegmentator.registry import TASKS, package_version, requires_license, task_modality

INTERNAL_TASKS = {"test", "total_highres_test"}  # development entries of the official tool
STEP_0_8_TASKS = {"total", "total_v3", "total_mr"}
PART_MAPS = {  # dataset id -> (part name, part map)
    **{tid: (name, m2b.class_map_5_parts[name]) for tid, name in m2b.map_taskid_to_partname_ct.items() if tid != 517},
    **{tid: (name, m2b.class_map_5_parts_total_v3[name]) for tid, name in m2b.map_taskid_to_partname_ct_v3.items()},
    **{tid: (name, m2b.class_map_parts_mr[name]) for tid, name in m2b.map_taskid_to_partname_mr.items()},
    **{tid: (name, m2b.class_map_parts_headneck_muscles[name])
       for tid, name in m2b.map_taskid_to_partname_headneck_muscles.items()},
}
DESCRIPTIONS = {
    "total": "117 anatomical structures on CT: organs, bones, muscles, vessels",
    "total_v3": "117 structures on CT, version 3 models (label 26 is vertebrae_L6)",
    "total_mr": "50 anatomical structures on MR",
    "body": "Body trunk and extremities on CT",
    "body_mr": "Body trunk and extremities on MR",
    "vertebrae_mr": "Individual vertebrae on MR",
    "lung_vessels": "Lung airways, airway walls, arteries and veins on CT",
    "lung_vessels_LEGACY": "Lung vessels and trachea/bronchia on CT (older model)",
    "cerebral_bleed": "Intracerebral haemorrhage on head CT",
    "hip_implant": "Hip implants on CT",
    "pleural_pericard_effusion": "Pleura, pleural and pericardial effusion on chest CT",
    "head_glands_cavities": "Eyes, optic nerves, glands and cavities of the head on CT",
    "head_muscles": "Muscles of the head on CT",
    "headneck_bones_vessels": "Larynx, hyoid, carotids and jugular veins on CT",
    "headneck_muscles": "Muscles of the head and neck on CT",
    "liver_vessels": "Liver vessels and liver tumour on contrast CT",
    "oculomotor_muscles": "Eye muscles and optic nerves on CT",
    "lung_nodules": "Lung and lung nodules on CT",
    "kidney_cysts": "Kidney cysts on CT",
    "breasts": "Breasts on CT",
    "liver_segments": "Couinaud liver segments 1-8 on CT",
    "liver_segments_mr": "Couinaud liver segments 1-8 on MR",
    "craniofacial_structures": "Mandible, skull, teeth, sinuses on CT",
    "abdominal_muscles": "Abdominal and trunk wall muscles on CT",
    "teeth": "Individual teeth, jaw bones and canals on CT (dental CT / CBCT)",
    "ventricle_parts": "Parts of the brain ventricles on CT",
    "liver_lesions": "Liver lesions on CT",
    "liver_lesions_mr": "Liver lesions on MR",
    "trunk_cavities": "Abdominal and thoracic cavity, pericardium, mediastinum on CT",
    "brain_aneurysm": "Brain aneurysms on TOF MR angiography",
    "vertebrae_body": "Vertebral bodies and intervertebral discs on CT",
    "vertebrae_pp": "Vertebrae with post-processing on CT",
    "vertebrae_pp_refined": "Vertebrae with post-processing and body/disc refinement on CT",
    "heartchambers_highres": "Heart chambers, aorta and pulmonary artery at high resolution on CT",
    "appendicular_bones": "Bones of hands, feet, forearm and lower leg on CT",
    "appendicular_bones_mr": "Bones of feet, forearm and lower leg on MR",
    "tissue_types": "Subcutaneous fat, torso fat, skeletal muscle on CT",
    "tissue_types_mr": "Subcutaneous fat, torso fat, skeletal muscle on MR",
    "tissue_4_types": "Subcutaneous, torso and intermuscular fat, skeletal muscle on CT",
    "face": "Face region on CT (for anonymisation)",
    "face_mr": "Face region on MR (for anonymisation)",
    "brain_structures": "Brain structures and lobes on CT",
    "thigh_shoulder_muscles": "Thigh and shoulder muscles on CT",
    "thigh_shoulder_muscles_mr": "Thigh and shoulder muscles on MR",
    "coronary_arteries": "Coronary arteries on cardiac CT",
    "coronary_arteries_LEGACY": "Coronary arteries on cardiac CT (older model)",
    "aortic_sinuses": "Aortic sinuses and outflow tract on cardiac CT",
    "renal_arteries": "Celiac trunk, SMA and renal arteries on CT",
    "aorta_annulus": "Aortic annulus and sinotubular junction on CT",
    "aortic_dissection": "True and false lumen of the aorta on CT",
    "pulmonary_artery_landmarks": "Aortic and pulmonary valve landmarks on CT",
}


def xyz(resample):
    """The official config gives spacing as a scalar or [x, y, z]; store [x, y, z] or None."""
    if resample is None:
        return None
    if isinstance(resample, (int, float)):
        return [float(resample)] * 3
    return [float(v) for v in resample]


def classes_of(mapping):
    return {str(k): v for k, v in sorted(mapping.items())}


def models_of(task, cfg):
    ids = cfg["task_id"] if isinstance(cfg["task_id"], list) else [cfg["task_id"]]
    models = []
    for tid in ids:
        model = {
            "dataset": tid,
            "trainer": cfg["trainer"],
            "plans": cfg["plans"] or "nnUNetPlans",
            "configuration": cfg["model"],
            "folds": cfg["folds"],
        }
        if len(ids) > 1:
            part, pmap = PART_MAPS[tid]
            model["part"] = part
            model["classes"] = classes_of(pmap)
        models.append(model)
    return models


def crop_model_ref(task, cfg, robust):
    """Which catalogue task/mode the official tool runs to make the crop mask."""
    if cfg.get("crop_model"):
        return {"task": cfg["crop_model"], "mode": "normal"}
    crop = cfg.get("crop") or []
    if "body_trunc" in crop or "body_extremities" in crop:
        return {"task": "body", "mode": "fast"}
    if task.endswith("_mr"):
        return {"task": "total_mr", "mode": "fast"}
    return {"task": "total", "mode": "fast" if robust else "fastest"}


def mode_entry(task, cfg):
    robust = bool(cfg.get("robust_crop"))
    entry = {
        "models": models_of(task, cfg),
        "resample": xyz(cfg.get("resample")),
        "step_size": 0.8 if task in STEP_0_8_TASKS else 0.5,
        "crop": cfg.get("crop"),
        "robust_crop": robust,
    }
    if cfg.get("crop"):
        entry["crop_model"] = crop_model_ref(task, cfg, robust)
        # python_api overrides the addon with 20 mm unless the task has its own crop model
        entry["crop_addon_mm"] = [float(v) for v in (cfg["crop_addon"] if cfg.get("crop_model") else [20, 20, 20])]
    if cfg.get("remove_outside"):
        entry["remove_outside"] = {"classes": cfg["remove_outside"],
                                   "dilation_mm": float(cfg["remove_outside_dilation"] or 0)}
    return entry


def build():
    from totalsegmentator.python_api import get_task_config  # pure config, no nnU-Net import

    tasks = {}
    datasets = {}
    for task in TASKS:
        if task in INTERNAL_TASKS:
            continue
        raw = TASK_CONFIGS[task]
        modes = {}
        if "sub_modes" in raw:
            for ours, theirs in (("normal", "default"), ("fast", "fast"), ("fastest", "fastest")):
                if theirs in raw["sub_modes"]:
                    cfg = dict(DEFAULT_CONFIG, **raw["sub_modes"][theirs])
                    modes[ours] = mode_entry(task, cfg)
        else:
            cfg = {k: v for k, v in raw.items() if k not in ("commercial", "info_msg")}
            cfg = dict(DEFAULT_CONFIG, **cfg)
            modes["normal"] = mode_entry(task, cfg)
        # cross-check our merge against the official resolver for the default mode
        official = get_task_config(task, quiet=True) if not requires_license(task) else None
        if official is not None:
            assert official["task_id"] == (modes["normal"]["models"][0]["dataset"]
                                           if len(modes["normal"]["models"]) == 1
                                           else [m["dataset"] for m in modes["normal"]["models"]]), task
        entry = {
            "modality": task_modality(task),
            "licensed": requires_license(task),
            "description": DESCRIPTIONS.get(task, task.replace("_", " ")),
            "classes": classes_of(m2b.class_map[task]),
            "modes": modes,
            "roi_subset": task.startswith("total"),
            "allow_fast_flag": not raw.get("disallow_fast", False),
        }
        aux = m2b.class_map.get(task + "_auxiliary")
        if aux:
            entry["auxiliary_labels"] = sorted(int(k) for k in aux)
        if raw.get("info_msg"):
            entry["note"] = raw["info_msg"].strip().removeprefix("INFO: ")
        if task in ("vertebrae_pp", "vertebrae_pp_refined", "body"):
            entry["postprocessing"] = task  # task-specific steps at model resolution
        if task == "vertebrae_pp_refined":
            entry["extra_datasets"] = [305]
        tasks[task] = entry
        for mode in modes.values():
            for model in mode["models"]:
                tid = model["dataset"]
                w = TASK_ID_WEIGHTS_CONFIGS[tid]
                datasets[str(tid)] = {"folder": w["foldername"], "release": w.get("version")}
        for tid in entry.get("extra_datasets", []):
            w = TASK_ID_WEIGHTS_CONFIGS[tid]
            datasets[str(tid)] = {"folder": w["foldername"], "release": w.get("version")}

    return {
        "format": 1,
        "source": f"facts from TotalSegmentator {package_version()} (Apache-2.0)",
        "totalsegmentator_version": package_version(),
        # the label values of TotalSegmentator v1 (`--v1_order` writes task total with them)
        "total_v1_classes": {str(k): v for k, v in sorted(m2b.class_map["total_v1"].items())},
        "weights_url": "https://github.com/wasserth/TotalSegmentator/releases/download/{release}/{folder}.zip",
        "licensed_weights_url": "https://backend.totalsegmentator.com/download_weights",
        "license_info_url": "https://backend.totalsegmentator.com/license-academic/",
        "datasets": dict(sorted(datasets.items(), key=lambda kv: int(kv[0]))),
        "tasks": tasks,
    }


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[2] / "Resources" / "tasks.json"
    catalogue = build()
    out.write_text(json.dumps(catalogue, indent=1) + "\n")
    print(f"wrote {out} ({len(catalogue['tasks'])} tasks, {len(catalogue['datasets'])} datasets)", file=sys.stderr)
