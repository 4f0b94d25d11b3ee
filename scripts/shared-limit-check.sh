#!/usr/bin/env bash
# The limits `fanout worker`s share, against the independent reference server: a coordinator
# (`--local-slots 0`) and three workers (`--slots 8` each) on one PostgreSQL store run the
# auth-refactor example's 47-agent plan against anthropic_ratelimit_server.py, which enforces
# SERVER_LIMIT of KIND (`rpm`: requests a minute; `itpm`: input tokens a minute) and reports
# it in its headers. The workflow's limit of that kind is WORKFLOW_LIMIT, or none at all
# (`none`: the workers learn it from the headers). Prints the coordinator's closing report,
# the store's shared rows (buckets and learned limits) and the server's counters (requests,
# 429s, span). The server answers canned text, so the agents fail and their dependants are
# skipped; what is measured is the traffic. FANOUT names another build to compare with.
#
#   scripts/with-postgres.sh scripts/shared-limit-check.sh REFERENCE_SERVER.py KIND SERVER_LIMIT WORKFLOW_LIMIT
set -euo pipefail
server="$1" kind="$2" server_limit="$3" limit="$4"
root="$(cd "$(dirname "$0")/.." && pwd)"
fanout="$(realpath "${FANOUT:-$root/target/debug/fanout}")"
example="$root/examples/auth-refactor"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
case "$kind" in
    rpm) server_flag=--rpm key=requests_per_minute ;;
    itpm) server_flag=--itpm key=input_tokens_per_minute ;;
    *) echo "KIND is rpm or itpm, not $kind" >&2; exit 2 ;;
esac
repo="$work/repo"
cp -r "$example/repo" "$repo"
git -C "$repo" init -q -b main
git -C "$repo" add -A
git -C "$repo" -c user.name=check -c user.email=check@example.invalid commit -q -m initial
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 "$server" --port "$port" --latency-ms 100 "$server_flag" "$server_limit" >"$work/server.log" 2>&1 &
pids+=($!)
sleep 1.5
if [ "$limit" = none ]; then
    cp "$example/claude-workflows.yaml" "$work/workflow.yaml"
else
    sed "0,/^workflow:/s//workflow:\n  rate_limits:\n    $key: $limit/" \
        "$example/claude-workflows.yaml" >"$work/workflow.yaml"
fi
"$fanout" plan "$work/workflow.yaml" --repo "$repo" --sim --scenario "$example/scenario.yaml" \
    --task "Refactor src/auth: extract JWT logic, validate every handler's input, add unit tests." \
    --json >"$work/plan.json"
plan="$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['saved']['path'])" "$work/plan.json")"
export ANTHROPIC_API_KEY=check ANTHROPIC_BASE_URL="http://127.0.0.1:$port"
cd "$work"
for i in 1 2 3; do
    "$fanout" worker --store "$FANOUT_TEST_POSTGRES_URL" --slots 8 --cache "$work/cache$i" \
        >"$work/worker$i.log" 2>&1 &
    pids+=($!)
done
started=$(date +%s)
"$fanout" run "$work/workflow.yaml" --plan "$plan" --repo "$repo" \
    --store "$FANOUT_TEST_POSTGRES_URL" --local-slots 0 >"$work/coordinator.out" 2>"$work/coordinator.err" \
    || tail -n 5 "$work/coordinator.err"
cat "$work/coordinator.out"
echo "wall: $(( $(date +%s) - started )) s"
# The shared rows (a build from before learned limits has no such table: nothing printed).
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
sql() { "$pg_bin/psql" "$FANOUT_TEST_POSTGRES_URL" -Atc "$1" 2>/dev/null || true; }
echo "rate buckets: $(sql "SELECT string_agg(name || ' ' || round(level::numeric, 1), ', ') FROM rate_buckets")"
echo "learned limits: $(sql "SELECT string_agg(api || ':' || kind || ' ' || limit_per_minute, ', ') FROM learned_limits")"
curl -s "http://127.0.0.1:$port/stats"
echo
