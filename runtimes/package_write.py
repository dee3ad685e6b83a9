"""Writing and updating a package's ``edgesight.yaml``: the converter writes new packages with it, and the device
adds the TensorRT engine it pre-built (``edgesight engine build``). Writes are atomic: a reader sees the old
manifest or the new one, never half of it."""
import os
from typing import Any, Dict, List, Mapping, Sequence

import yaml

from ..files import atomic_write
from .manifest import MANIFEST, SCHEMA, Artifact, Calibration, Manifest, sha256_file
from .package import ModelPackage

ENGINE_FILE = "model.int8.engine"


def write_manifest(out_dir: str, manifest: Manifest) -> str:
    """Atomically write ``edgesight.yaml`` in ``out_dir`` (temp file, fsync, rename)."""
    text = yaml.safe_dump(manifest.to_yaml_dict(), sort_keys=False, default_flow_style=None, width=120)
    return atomic_write(os.path.join(out_dir, MANIFEST), text)


def with_artifacts(manifest: Manifest, artifacts: Sequence[Artifact], **top: Any) -> Manifest:
    """A copy of ``manifest`` listing ``artifacts`` (validated again as a whole), with top-level fields replaced;
    written in this edgesight's schema (a /1 package read here is a valid /2 one)."""
    data: Dict[str, Any] = dict(manifest.to_yaml_dict(), **top)
    data["schema"] = SCHEMA
    data["artifacts"] = [a.model_dump(mode="json", exclude_none=True) for a in artifacts]
    return Manifest(**data)


def with_calibrations(artifacts: Sequence[Artifact], by_file: Mapping[str, Calibration]) -> List[Artifact]:
    """``artifacts`` with the calibration fitted for each file in ``by_file`` set; a TensorRT engine runs with the
    calibration of the Q/DQ ONNX it is built from (the rule, in one place)."""
    arts = [a.model_copy(update={"calibration": by_file[a.file]}) if a.file in by_file else a for a in artifacts]
    source = next((a.calibration for a in arts if a.builds_tensorrt_engine and a.calibration is not None), None)
    return [a.model_copy(update={"calibration": source}) if a.runtime == "tensorrt" and source else a
            for a in arts]


def add_engine(pkg: ModelPackage, engine_path: str, built_for: Dict[str, str], layout: str) -> ModelPackage:
    """Register the engine at ``engine_path`` (inside the package) as its one ``tensorrt`` artifact; it keeps the
    calibration fitted for the Q/DQ ONNX it was built from."""
    engine = Artifact(runtime="tensorrt", file=os.path.relpath(engine_path, pkg.root), precision="int8",
                      sha256=sha256_file(engine_path), layout=layout, built_for=built_for)
    arts = with_calibrations([a for a in pkg.manifest.artifacts if a.runtime != "tensorrt"] + [engine], {})
    write_manifest(pkg.root, with_artifacts(pkg.manifest, arts))
    return ModelPackage.load(pkg.root)
