#!/usr/bin/env bash
# Creates .venv with the official anthropic, openai and mcp SDKs (used by the simulator's
# conformance check and the `fanout mcp` check). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import anthropic, openai, mcp' 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check anthropic openai mcp
fi
