#!/usr/bin/env bash
# Creates .venv with the official anthropic and openai SDKs (used only by the simulator's
# conformance check). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import anthropic, openai' 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check anthropic openai
fi
