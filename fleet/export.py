"""`edgesight collect export`: a collected dataset as Label Studio tasks (predictions as pre-annotations) or as
plain class folders (``--calib`` / ``--val`` input of `edgesight convert`)."""
import json
import logging
import os
import shutil
from typing import Any, Dict, List, Optional
from xml.sax.saxutils import quoteattr

from ..errors import ConfigError
from .intake import folder_name
from .store import MANIFEST, read_manifest

log = logging.getLogger(__name__)

FROM_NAME, TO_NAME = "label", "image"  # the control and object tag names of label_config.xml


def _records(dataset: str) -> List[Dict[str, Any]]:
    if not os.path.isfile(os.path.join(dataset, MANIFEST)):
        raise ConfigError("no %s here: not a dataset written by `edgesight collect`" % MANIFEST, file=dataset)
    try:
        return list(read_manifest(dataset))
    except (ValueError, KeyError) as exc:
        raise ConfigError("unreadable manifest line (%s)" % exc, file=os.path.join(dataset, MANIFEST))


def label_config(labels: List[str]) -> str:
    """The Label Studio labelling interface for single-choice image classification over ``labels``."""
    choices = "\n".join("    <Choice value=%s/>" % quoteattr(lbl) for lbl in labels)
    return ('<View>\n  <Image name="%s" value="$image"/>\n  <Choices name="%s" toName="%s" choice="single" '
            'showInline="true">\n%s\n  </Choices>\n</View>\n' % (TO_NAME, FROM_NAME, TO_NAME, choices))


def labelstudio_tasks(records: List[Dict[str, Any]], image_root: str) -> List[Dict[str, Any]]:
    """Label Studio's task import format: ``data`` (the image URL and our metadata) and ``predictions`` whose
    ``result`` pre-selects the device's predicted class (https://labelstud.io/guide/predictions)."""
    tasks = []
    for r in records:
        model = r.get("model") or {}
        tasks.append({
            "data": {"image": image_root + r["file"], "sample_id": r["id"], "device": r["device"],
                     "camera": r["camera"], "reason": r["reason"], "captured": r["captured"],
                     "top_k": ", ".join("%s %.3f" % (t["label"], t["score"]) for t in r.get("top_k", []))},
            "predictions": [{
                "model_version": "%s@%s" % (model.get("name"), model.get("version")),
                "score": r["score"],
                "result": [{"id": r["id"][:10], "from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                            "value": {"choices": [r["label"]]}}],
            }],
        })
    return tasks


def export_labelstudio(dataset: str, out: str, image_root: Optional[str] = None,
                       labels: Optional[List[str]] = None) -> Dict[str, Any]:
    """Write ``out`` (tasks JSON) and ``label_config.xml`` beside it. ``image_root`` prefixes each image's path
    inside the dataset; the default suits Label Studio's local file serving with LOCAL_FILES_DOCUMENT_ROOT set to
    the dataset's parent folder."""
    records = _records(dataset)
    root = image_root if image_root is not None else "/data/local-files/?d=%s/" % os.path.basename(
        os.path.abspath(dataset))
    tasks = labelstudio_tasks(records, root)
    names = labels or sorted({r["label"] for r in records})
    missing = sorted({r["label"] for r in records} - set(names))
    if missing:
        raise ConfigError("predicted labels missing from --labels: %s" % ", ".join(missing), field="--labels")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(tasks, f, indent=1)
    xml = os.path.join(os.path.dirname(os.path.abspath(out)), "label_config.xml")
    with open(xml, "w", encoding="utf-8") as f:
        f.write(label_config(names))
    return {"format": "labelstudio", "tasks": len(tasks), "out": out, "label_config": xml, "labels": names}


def export_folder(dataset: str, out: str) -> Dict[str, Any]:
    """``out/<label>/<file>.jpg`` for every stored sample (hard links where the file system allows, else copies)."""
    records = _records(dataset)
    if os.path.abspath(out) == os.path.abspath(dataset):
        raise ConfigError("--out must differ from the dataset folder", field="--out")
    counts: Dict[str, int] = {}
    for r in records:
        src = os.path.join(dataset, r["file"])
        if not os.path.isfile(src):
            log.warning("%s is in the manifest but not on disk; skipped", src)
            continue
        dst_dir = os.path.join(out, folder_name(r["label"]))
        os.makedirs(dst_dir, exist_ok=True)
        dst = os.path.join(dst_dir, os.path.basename(r["file"]))
        if not os.path.exists(dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    return {"format": "folder", "images": sum(counts.values()), "out": out, "by_label": dict(sorted(counts.items()))}
