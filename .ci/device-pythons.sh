#!/usr/bin/env bash
# The device side on the Pythons devices really have: 3.8 (JetPack 5, Xavier), 3.12 (Ubuntu 24.04 / JetPack 6 user
# venvs), 3.13 (Raspberry Pi OS trixie). For each: a fresh venv, `pip install .[onnx,tflite,camera,agent,test]`
# (no converter stack: devices do not carry it), then the device-side tests (runtimes, calibration, agent, contract,
# core, check-config) with -m "not host". Interpreters come from pyenv (`pyenv prefix X`) or pythonX.Y on PATH; a
# missing one fails the stage: a skipped Python is not a passed one.
#   bash .ci/device-pythons.sh [3.8 3.12 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.8 3.12 3.13)
tests=(tests/runtimes tests/calibration tests/agent tests/contract tests/core tests/cli/test_check_config.py)

. .ci/find-python.sh

for v in "${versions[@]}"; do
    t0=$(date +%s)
    echo "== device side on Python $v"
    py=$(find_python "$v") || { echo "Python $v not found (pyenv install $v, or put python$v on PATH)" >&2; exit 1; }
    venv=.venv-py${v/./}
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip setuptools wheel
    "$venv/bin/pip" install -q ".[onnx,tflite,camera,agent,test]"
    "$venv/bin/python" -c "import sys; print('  ', sys.version.split()[0])"
    "$venv/bin/pip" list 2>/dev/null | grep -iE '^(numpy|onnxruntime|ai-edge-litert|tflite-runtime|paho-mqtt|pydantic) ' \
        | sed 's/^/   /'
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not host" "${tests[@]}"
    echo "   Python $v: $(( $(date +%s) - t0 )) s"
done
