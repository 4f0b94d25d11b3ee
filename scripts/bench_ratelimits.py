#!/usr/bin/env python3
"""Rate-limit and outage benchmarks of `fanout run` (item work, one call per item) against the
independent reference server (/work/shared/reference/anthropic_ratelimit_server.py by default,
or $FANOUT_REFERENCE_SERVER), which implements Anthropic's documented rate-limit semantics.

usage: scripts/bench_ratelimits.py SCENARIO [--bin target/release/fanout] [--items N] ...
  learned     --rpm 600, limits not in the workflow (rate_limits: {})
  configured  --rpm 600, requests_per_minute: 600 in the workflow
  itpm        --itpm L (binding), limits not in the workflow
  low         --rpm 12, 40 items, limits not in the workflow
  two         two fanout processes on one key at --rpm 600, 1000 items each
  outage      100 items, the server killed at 0.3 s and restarted 1 s later
  stall       500 items, the server stopped (SIGSTOP) for 20 s, --request-timeout 5
  (outage and stall take --no-fault for the fault-free time of the same work)

Prints one JSON object: wall time of each fanout process, the floor, the ratio, the server's
counters (GET /stats: requests, ok, r429) and whether every item ended exactly once in
results.jsonl. Needs aiohttp (pip install aiohttp). Build first:
cargo build --release -p fanout-cli
"""
import argparse, json, os, signal, socket, subprocess, sys, tempfile, time, urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.environ.get("FANOUT_REFERENCE_SERVER",
                        "/work/shared/reference/anthropic_ratelimit_server.py")
SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "category": {"type": "string", "enum": ["billing", "login", "bug", "other"]},
        "summary": {"type": "string", "maxLength": 200},
    },
    "required": ["id", "category", "summary"],
    "additionalProperties": False,
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port, args, log=None):
    cmd = [sys.executable, SERVER, "--port", str(port), "--latency-ms", str(args.latency_ms)]
    if args.rpm:
        cmd += ["--rpm", str(args.rpm)]
    if args.itpm:
        cmd += ["--itpm", str(args.itpm)]
    out = open(log, "a") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            stats(port)
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("the reference server did not start")


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
        return json.load(r)


def workflow(dir_, name, items, limits):
    os.makedirs(dir_, exist_ok=True)
    with open(os.path.join(dir_, "items.jsonl"), "w") as f:
        for i in range(items):
            f.write(json.dumps({"id": f"{name}-{i:05}", "subject": f"ticket {i}",
                                "body": "The invoice page shows the wrong total after I apply a discount."}) + "\n")
    with open(os.path.join(dir_, "schema.json"), "w") as f:
        json.dump(SCHEMA, f)
    limits_yaml = "{" + ", ".join(f"{k}: {v}" for k, v in limits.items()) + "}"
    with open(os.path.join(dir_, "workflow.yaml"), "w") as f:
        f.write(f"""workflow:
  name: {name}
  task: "Triage the tickets."
  max_parallel_agents: {items}
  rate_limits: {limits_yaml}
  items:
    input:
      path: items.jsonl
      id: {{field: id}}
    chunking:
      strategy: per_item
    worker:
      instructions: "Pick the category and write one sentence saying what the customer needs."
      output_schema: schema.json
      max_tokens: 256
    output:
      format: jsonl
""")
    return os.path.join(dir_, "workflow.yaml")


def launch(bin_, wf, port, extra):
    env = dict(os.environ, ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}", ANTHROPIC_API_KEY="x")
    cmd = [bin_, "run", wf] + extra
    log = open(wf + ".log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=os.path.dirname(wf)), time.time()


def accounted(dir_, items):
    """Every item ends exactly once in a results.jsonl (and none in failed.jsonl)."""
    ids, failed = [], 0
    for root, _, files in os.walk(dir_):
        for name in files:
            path = os.path.join(root, name)
            if name == "results.jsonl":
                ids += [json.loads(l)["id"] for l in open(path) if l.strip()]
            elif name == "failed.jsonl":
                failed += sum(1 for l in open(path) if l.strip())
    return {"results": len(ids), "unique": len(set(ids)), "failed": failed,
            "exactly_once": len(ids) == items and len(set(ids)) == items and failed == 0}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["learned", "configured", "itpm", "low", "two", "outage", "stall"])
    p.add_argument("--bin", default=os.path.join(REPO, "target/release/fanout"))
    p.add_argument("--items", type=int)
    p.add_argument("--latency-ms", type=int, default=500)
    p.add_argument("--rpm", type=int)
    p.add_argument("--itpm", type=int)
    p.add_argument("--stall-s", type=float, default=20.0)
    p.add_argument("--no-fault", action="store_true",
                   help="outage/stall: run the same work without the fault (the fault-free time)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    a = p.parse_args()
    defaults = {"learned": (1000, 600, None), "configured": (1000, 600, None),
                "itpm": (1000, None, 210000), "low": (40, 12, None), "two": (1000, 600, None),
                "outage": (100, None, None), "stall": (500, None, None)}
    items, rpm, itpm = defaults[a.scenario]
    a.items = a.items or items
    a.rpm = a.rpm if a.rpm is not None else rpm
    a.itpm = a.itpm if a.itpm is not None else itpm
    work = tempfile.mkdtemp(prefix=f"fanout-bench-{a.scenario}-")
    port = free_port()
    server_log = os.path.join(work, "server.log")
    server = start_server(port, a, server_log)
    limits = {"requests_per_minute": a.rpm} if a.scenario == "configured" else {}
    result = {"scenario": a.scenario + (" (no fault)" if a.no_fault else ""), "items": a.items, "rpm": a.rpm, "itpm": a.itpm,
              "latency_ms": a.latency_ms}
    try:
        runs = ["a", "b"] if a.scenario == "two" else ["a"]
        extra = ["--request-timeout", "5"] if a.scenario == "stall" else []
        wfs = [workflow(os.path.join(work, r), f"bench-{r}", a.items, limits) for r in runs]
        procs = [launch(a.bin, wf, port, extra) for wf in wfs]
        fault = {}
        if a.no_fault:
            pass
        elif a.scenario == "outage":
            time.sleep(0.3)
            server.kill()
            server.wait()
            fault["killed_at_s"] = round(time.time() - procs[0][1], 3)
            time.sleep(1.0)
            server = start_server(port, a, server_log)
            fault["restarted_at_s"] = round(time.time() - procs[0][1], 3)
        elif a.scenario == "stall":
            time.sleep(1.0)
            server.send_signal(signal.SIGSTOP)
            fault["stopped_at_s"] = round(time.time() - procs[0][1], 3)
            time.sleep(a.stall_s)
            server.send_signal(signal.SIGCONT)
            fault["resumed_at_s"] = round(time.time() - procs[0][1], 3)
        walls, codes = [], []
        for proc, started in procs:
            codes.append(proc.wait())
            walls.append(round(time.time() - started, 2))
        s = stats(port)
        result.update(fault)
        result["wall_s"] = walls
        result["exit_codes"] = codes
        result["server"] = {k: s.get(k) for k in ("requests", "ok", "r429", "r529", "r500", "max_inflight", "input_tokens", "span_s")}
        total = a.items * len(runs)
        latency = a.latency_ms / 1000.0
        if a.scenario == "itpm":
            tokens = s["input_tokens"]
            floor = max(0.0, tokens - a.itpm) / (a.itpm / 60.0) + latency
        elif a.rpm:
            floor = max(0, total - a.rpm) / (a.rpm / 60.0) + latency
        else:
            floor = latency
        result["floor_s"] = round(floor, 2)
        result["ratio"] = round(max(walls) / floor, 3)
        result["r429_share"] = round(s["r429"] / max(1, s["requests"]), 4)
        if "resumed_at_s" in fault:
            result["finished_after_resume_s"] = round(max(walls) - fault["resumed_at_s"], 2)
        result["accounting"] = [accounted(os.path.dirname(wf), a.items) for wf in wfs]
    finally:
        try:
            server.send_signal(signal.SIGCONT)
        except ProcessLookupError:
            pass
        server.kill()
        server.wait()
    if a.keep:
        result["work_dir"] = work
    else:
        subprocess.run(["rm", "-rf", work])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
