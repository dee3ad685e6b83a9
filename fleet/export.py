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
from .stores import Store, is_s3, open_store

log = logging.getLogger(__name__)

FROM_NAME, TO_NAME = "label", "image"  # the control and object tag names of label_config.xml


def _open(dataset: str, s3_endpoint: Optional[str]) -> Store:
    return open_store(dataset, collector="edgesight-export", s3_endpoint=s3_endpoint, create=False)


def label_config(labels: List[str]) -> str:
    """The Label Studio labelling interface for single-choice image classification over ``labels``."""
    choices = "\n".join("    <Choice value=%s/>" % quoteattr(lbl) for lbl in labels)
    return ('<View>\n  <Image name="%s" value="$image"/>\n  <Choices name="%s" toName="%s" choice="single" '
            'showInline="true">\n%s\n  </Choices>\n</View>\n' % (TO_NAME, FROM_NAME, TO_NAME, choices))


def labelstudio_tasks(records: List[Dict[str, Any]], urls: List[str]) -> List[Dict[str, Any]]:
    """Label Studio's task import format: ``data`` (the image URL and our metadata) and ``predictions`` whose
    ``result`` pre-selects the device's predicted class (https://labelstud.io/guide/predictions)."""
    tasks = []
    for r, url in zip(records, urls):
        model = r.get("model") or {}
        tasks.append({
            "data": {"image": url, "sample_id": r["id"], "device": r["device"],
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
                       labels: Optional[List[str]] = None, s3_endpoint: Optional[str] = None) -> Dict[str, Any]:
    """Write ``out`` (tasks JSON) and ``label_config.xml`` beside it. ``image_root`` prefixes each image's path
    inside the dataset; the default suits Label Studio's local file serving with LOCAL_FILES_DOCUMENT_ROOT set to
    the dataset's parent folder, and for an S3 dataset the ``s3://bucket/key`` URLs that Label Studio's S3 source
    storage resolves (pre-signed) for the annotators."""
    store = _open(dataset, s3_endpoint)
    try:
        records = list(store.records())  # the folder store: manifest order; S3: sorted by arrival
        if is_s3(dataset):
            records.sort(key=lambda r: (r.get("received", ""), r["id"]))
        tasks = labelstudio_tasks(records, [store.image_url(r, image_root) for r in records])
    finally:
        store.close()
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


def export_folder(dataset: str, out: str, s3_endpoint: Optional[str] = None) -> Dict[str, Any]:
    """``out/<label>/<file>.jpg`` for every stored sample (hard links where the file system allows, else copies;
    from S3, downloads)."""
    if not is_s3(dataset) and os.path.abspath(out) == os.path.abspath(dataset):
        raise ConfigError("--out must differ from the dataset folder", field="--out")
    store = _open(dataset, s3_endpoint)
    counts: Dict[str, int] = {}
    try:
        for r in store.records():
            dst_dir = os.path.join(out, folder_name(r["label"]))
            dst = os.path.join(dst_dir, os.path.basename(r["file"]))
            if not _place(store, r, dst):
                continue
            counts[r["label"]] = counts.get(r["label"], 0) + 1
    finally:
        store.close()
    return {"format": "folder", "images": sum(counts.values()), "out": out, "by_label": dict(sorted(counts.items()))}


def _place(store: Store, rec: Dict[str, Any], dst: str) -> bool:
    """The record's image at ``dst`` (kept when there already); False when the store lacks it."""
    if os.path.exists(dst):
        return True
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    path = getattr(store, "image_path", None)
    if path is not None:  # the folder store: a hard link, else a copy
        src = path(rec)
        if not os.path.isfile(src):
            log.warning("%s is in the manifest but not on disk; skipped", src)
            return False
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        return True
    data = store.read_image(rec)
    if data is None:
        log.warning("%s has no image %s; skipped", store.root, rec["file"])
        return False
    with open(dst + ".tmp", "wb") as f:
        f.write(data)
    os.replace(dst + ".tmp", dst)
    return True
