"""The shape of the code, checked on the real tree: file and function sizes, which part may import which, and that
everything imports (and fails with the right extra named) when the heavy packages are missing."""
import ast
import json
import os
import subprocess
import sys

from support import ROOT, SUPPORT

PARTS = ("agent", "calibration", "cli", "contract", "converters", "fleet", "runtimes")
NOT_CODE = {"tests", "bench", "examples", "docs", "systemd", "build", "dist"}
# part -> the parts it may import (top-level modules such as errors.py, configfile.py, files.py: always)
ALLOWED = {
    "calibration": set(),
    "contract": set(),
    "runtimes": {"calibration"},
    "agent": {"runtimes", "calibration", "contract"},
    "converters": {"runtimes", "calibration"},
    "fleet": {"contract"},
    "cli": set(PARTS),
    "": set(),  # the top-level modules import only each other (__main__.py, the entry point, runs cli)
}


def production_files():
    for dirpath, dirs, files in os.walk(ROOT):
        rel = os.path.relpath(dirpath, ROOT)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in NOT_CODE]
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.normpath(os.path.join(rel, name))


def test_no_file_over_400_lines_and_no_function_over_80():
    files, funcs = [], []
    for rel in production_files():
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            src = f.read()
        files.append((src.count("\n") + 1, rel))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, "%s:%s" % (rel, node.name)))
    files.sort(reverse=True)
    funcs.sort(reverse=True)
    print("largest files:", files[:5])
    print("longest functions:", funcs[:5])
    assert files[0][0] <= 400, files[:3]
    assert funcs[0][0] <= 80, funcs[:3]
    cli = [(n, r) for n, r in files if r.startswith("cli" + os.sep)]
    assert max(cli)[0] <= 250 and max(n for n, r in funcs if r.startswith("cli" + os.sep)) <= 60


def imported_parts(rel):
    """(part, line) for every edgesight part or top-level module the file imports."""
    part = rel.split(os.sep)[0] if os.sep in rel else ""
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = []
    package = [part] if part else []  # every part is one package deep
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            out.append((target[0] if target else node.names[0].name, node.lineno))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for n in names:
                if n.startswith("edgesight."):
                    out.append((n.split(".")[1], node.lineno))
    return part, out


def test_dependencies_point_one_way():
    broken = []
    for rel in production_files():
        part, targets = imported_parts(rel)
        for target, line in targets:
            if rel == "__main__.py" and target == "cli":
                continue
            if target in PARTS and target != part and target not in ALLOWED.get(part, set()):
                broken.append("%s:%d imports %s" % (rel, line, target))
    assert not broken, broken


def test_the_device_command_engine_build_imports_nothing_host_side():
    for rel in ("cli/engine.py", "runtimes/engine_prebuild.py", "runtimes/tensorrt_build.py",
                "runtimes/package_write.py"):
        _, targets = imported_parts(rel)
        assert not {t for t, _ in targets} & {"converters", "fleet", "agent"}, rel


BLOCKED = ("scipy", "onnxruntime", "onnx", "ai_edge_litert", "tflite_runtime", "tensorflow", "tensorrt", "cv2", "PIL",
           "paho", "pycuda", "cuda", "cryptography", "boto3", "botocore")


def test_everything_imports_without_the_heavy_packages_and_using_a_feature_names_the_extra(tmp_path):
    """Polygraphy's dependency test: every module imports with the optional packages blocked, and each feature
    that needs one raises MissingDependencyError naming the extra that installs it."""
    script = os.path.join(SUPPORT, "blocked_imports.py")
    env = dict(os.environ, EDGESIGHT_BLOCK=",".join(BLOCKED))
    proc = subprocess.run([sys.executable, script, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["import_failures"] == {}, report["import_failures"]
    assert report["modules"] >= 60
    for feature, extra in (("onnxruntime backend", "onnx"), ("tflite backend", "tflite"),
                           ("tensorrt backend", "tensorrt"), ("reading an image", "camera"),
                           ("a camera", "camera"), ("the agent's MQTT link", "agent"), ("the collector", "fleet"),
                           ("reading an ONNX model", "convert"), ("fitting a temperature", "convert"),
                           ("verifying a signed rollout", "agent"), ("the S3 store", "s3")):
        got = report["features"][feature]
        assert got == "MissingDependencyError:%s" % extra, (feature, got)
