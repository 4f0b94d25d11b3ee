#!/usr/bin/env bash
# The shared rate limit of `fanout worker`s against the independent reference server: a
# coordinator (`--local-slots 0`) and three workers (`--slots 8` each) on one PostgreSQL
# store run the auth-refactor example's 47-agent plan against
# anthropic_ratelimit_server.py limited to RPM requests a minute, with the workflow's
# `rate_limits.requests_per_minute` set to LIMIT. Prints the coordinator's closing report and
# the server's counters (requests, 429s, span). The server answers canned text, so the
# agents fail and their dependants are skipped; what is measured is the traffic.
#
#   scripts/with-postgres.sh scripts/shared-limit-check.sh REFERENCE_SERVER.py RPM LIMIT
set -euo pipefail
server="$1" rpm="$2" limit="$3"
root="$(cd "$(dirname "$0")/.." && pwd)"
fanout="${FANOUT:-$root/target/debug/fanout}"
example="$root/examples/auth-refactor"
work="$(mktemp -d)"
trap 'pkill -f "fanout worker --store" || true; kill "${ref:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
repo="$work/repo"
cp -r "$example/repo" "$repo"
git -C "$repo" init -q -b main
git -C "$repo" add -A
git -C "$repo" -c user.name=check -c user.email=check@example.invalid commit -q -m initial
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 "$server" --port "$port" --latency-ms 100 --rpm "$rpm" >"$work/server.log" 2>&1 &
ref=$!
sleep 1.5
sed "0,/^workflow:/s//workflow:\n  rate_limits:\n    requests_per_minute: $limit/" \
    "$example/claude-workflows.yaml" >"$work/workflow.yaml"
"$fanout" plan "$work/workflow.yaml" --repo "$repo" --sim --scenario "$example/scenario.yaml" \
    --task "Refactor src/auth: extract JWT logic, validate every handler's input, add unit tests." \
    --json >"$work/plan.json"
plan="$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['saved']['path'])" "$work/plan.json")"
export ANTHROPIC_API_KEY=check ANTHROPIC_BASE_URL="http://127.0.0.1:$port"
for i in 1 2 3; do
    (cd "$work" && "$fanout" worker --store "$FANOUT_TEST_POSTGRES_URL" --slots 8 \
        --cache "$work/cache$i" >"$work/worker$i.log" 2>&1 &)
done
started=$(date +%s)
(cd "$work" && "$fanout" run "$work/workflow.yaml" --plan "$plan" --repo "$repo" \
    --store "$FANOUT_TEST_POSTGRES_URL" --local-slots 0 >"$work/coordinator.out" 2>"$work/coordinator.err") || true
cat "$work/coordinator.out"
echo "wall: $(( $(date +%s) - started )) s"
curl -s "http://127.0.0.1:$port/stats"
echo
