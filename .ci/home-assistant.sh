#!/usr/bin/env bash
# Home Assistant in a venv of its own (.venv-ha, Python 3.13), so that tests/agent/test_home_assistant.py checks the
# agent's MQTT discovery configs with Home Assistant's own code: its discovery topic pattern, its sensor and
# binary_sensor DISCOVERY_SCHEMA and its template engine (tests/support/ha_check.py). Prints the interpreter's path
# last; .ci/run exports it as EDGESIGHT_HA_PYTHON for the test stages.
#   bash .ci/home-assistant.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/find-python.sh
# 2025.4.4: the release pip resolves for CPython 3.13.0 (pyenv's 3.13 here); later releases need a newer 3.13
version=2025.4.4
py=$(find_python 3.13) || { echo "Python 3.13 not found (pyenv install 3.13)" >&2; exit 1; }
rm -rf .venv-ha
"$py" -m venv .venv-ha
.venv-ha/bin/pip install -q --upgrade pip >&2
.venv-ha/bin/pip install -q "homeassistant==$version" >&2
.venv-ha/bin/python -c "from homeassistant.const import __version__; print('   Home Assistant', __version__)" >&2
echo "$(pwd)/.venv-ha/bin/python"
