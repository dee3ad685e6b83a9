#!/usr/bin/env bash
# The demo on a fresh machine: set-up (venv with edgesight[all]; mosquitto from apt when missing), then the whole
# product end to end on the bundled example: convert -> local broker -> agent -> subscriber + collector -> Label
# Studio export. Ends by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mosquitto
    else
        sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mosquitto
    fi
fi
if [ ! -x .venv/bin/edgesight ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e ".[all]"
fi
.venv/bin/edgesight info examples/digits/package
exec .venv/bin/python examples/demo.py "$@"
