#!/usr/bin/env bash
# The demo: install edgesight into .venv (first run only), then validate the example package and run the example
# model through every runtime installed here. (The agent issue turns this into the full camera -> MQTT demo.)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/edgesight ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e ".[all]"
fi
set -x
.venv/bin/edgesight info examples/digits/package
.venv/bin/edgesight classify examples/digits/package examples/digits/images/val/seven/digit_0173.png --runtime all
.venv/bin/edgesight classify examples/digits/package examples/digits/images/val --runtime all
