#!/usr/bin/env bash
# Runs scripts/sdk_conformance.py (official anthropic + openai Python SDKs) against `fanout sim`.
#
# Usage: scripts/sdk-conformance.sh [PATH_TO_FANOUT_BINARY]   (default: target/debug/fanout)
# Builds nothing: build the binary first (cargo build -p fanout-cli).
# Uses a virtualenv at $REPO/.venv, created and filled (anthropic, openai) when missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-$REPO/target/debug/fanout}"
VENV="$REPO/.venv"

if [[ ! -x "$BIN" ]]; then
    echo "sdk-conformance: no fanout binary at $BIN (build it with: cargo build -p fanout-cli)" >&2
    exit 2
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import anthropic, openai" 2>/dev/null; then
    "$VENV/bin/pip" install -q anthropic openai
fi

OUT="$(mktemp)"
"$BIN" sim --port 0 --scenario "$REPO/scripts/sdk_conformance_scenario.yaml" >"$OUT" 2>&1 &
SIM_PID=$!
cleanup() {
    kill "$SIM_PID" 2>/dev/null || true
    wait "$SIM_PID" 2>/dev/null || true
    rm -f "$OUT"
}
trap cleanup EXIT

URL=""
for _ in $(seq 1 300); do
    LINE="$(head -n 1 "$OUT" 2>/dev/null || true)"
    if [[ "$LINE" == "fanout sim listening on "* ]]; then
        URL="${LINE##* }"
        break
    fi
    if ! kill -0 "$SIM_PID" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
if [[ -z "$URL" ]]; then
    echo "sdk-conformance: the simulator did not start:" >&2
    cat "$OUT" >&2
    exit 1
fi

set +e
"$VENV/bin/python" "$REPO/scripts/sdk_conformance.py" "$URL"
STATUS=$?
set -e
exit "$STATUS"
