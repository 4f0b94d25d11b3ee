#!/usr/bin/env bash
# Creates .venv with the official anthropic, openai and mcp SDKs and the OpenTelemetry protobuf
# definitions (used by the simulator's conformance check, the `fanout mcp` check and the trace
# export check). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import anthropic, openai, mcp, opentelemetry.proto' 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check anthropic openai mcp opentelemetry-proto
fi
