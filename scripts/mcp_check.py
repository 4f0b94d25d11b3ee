"""Drive `fanout mcp --sim` with the official MCP Python SDK, as an agent would.

Usage: mcp_check.py FANOUT_BINARY

Copies the quickstart example repository to a temporary git repository, starts
`fanout mcp --sim --scenario … --root TMP` over stdio, and checks: the tools and their schemas;
plan_workflow's report; that a start without a reviewed plan, with a tampered plan, with a path
outside the roots, or on a busy repository is a tool error that writes nothing; that
start_run returns within 5 s; that run_status reaches `completed` and agrees with
run_result and list_runs; that each run's traces reach an OTLP collector named by
OTEL_EXPORTER_OTLP_ENDPOINT; cancel of an unknown run. Prints PASS/FAIL per check and exits
non-zero on any failure.
"""

import asyncio
import http.server
import json
import threading
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

BIN = str(Path(sys.argv[1]).resolve())
REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "examples" / "quickstart"
TICKETS = REPO_ROOT / "examples" / "support-tickets"
EXPECTED_TOOLS = {
    "plan_workflow",
    "start_run",
    "run_status",
    "run_result",
    "cancel_run",
    "resume_run",
    "list_runs",
}

results = []


def start_collector():
    """An OTLP/HTTP (JSON) collector on loopback: the bodies POSTed to /v1/traces."""
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path == "/v1/traces":
                received.append(json.loads(body))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", received


def traced_roots(received):
    """`fanout.run.id` → name of every root span the collector received."""
    roots = {}
    for request in received:
        for resource in request.get("resourceSpans", []):
            for scope in resource.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    if span.get("parentSpanId", "") != "":
                        continue
                    attrs = {kv["key"]: kv["value"] for kv in span.get("attributes", [])}
                    run = attrs.get("fanout.run.id", {}).get("stringValue")
                    roots[run] = span["name"]
    return roots


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def git(repo, *args):
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        check=True,
        capture_output=True,
    )


def text_of(result):
    return "\n".join(block.text for block in result.content if getattr(block, "text", None))


def runs_on_disk(repo):
    runs = repo / ".fanout" / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.exists() else []


async def check(name, coroutine):
    try:
        await coroutine
        results.append((name, None))
        print(f"PASS {name}", flush=True)
    except Exception as err:  # noqa: BLE001 - every failure is reported, not raised
        detail = "".join(traceback.format_exception(err)).strip() if os.environ.get("MCP_CHECK_TRACE") else "".join(traceback.format_exception_only(type(err), err)).strip()
        results.append((name, detail))
        print(f"FAIL {name}: {detail}", flush=True)


async def main():
    work = Path(tempfile.mkdtemp(prefix="fanout-mcp-"))
    outside = Path(tempfile.mkdtemp(prefix="fanout-mcp-outside-"))
    try:
        repo = work / "shop-api"
        shutil.copytree(EXAMPLE / "repo", repo)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "initial")
        workflow = work / "workflow.yaml"
        shutil.copy(EXAMPLE / "workflow.yaml", workflow)
        scenario = EXAMPLE / "scenario.yaml"
        stray = outside / "workflow.yaml"
        shutil.copy(EXAMPLE / "workflow.yaml", stray)
        # An item workflow: the support-tickets example, and a copy whose input is outside.
        tickets = work / "tickets"
        tickets.mkdir()
        for name in ("workflow.yaml", "schema.json", "tickets.jsonl"):
            shutil.copy(TICKETS / name, tickets / name)
        shutil.copy(TICKETS / "tickets.jsonl", outside / "tickets.jsonl")
        leaky = tickets / "leaky.yaml"
        leaky.write_text((TICKETS / "workflow.yaml").read_text().replace(
            "path: tickets.jsonl", f"path: {outside / 'tickets.jsonl'}"))

        state = {}
        collector, traces = start_collector()
        params = StdioServerParameters(
            command=BIN,
            args=["mcp", "--sim", "--scenario", str(scenario), "--sim-latency-ms", "200",
                  "--root", str(work)],
            cwd=str(work),
            env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": collector,
                 "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()

                async def tools():
                    listed = await session.list_tools()
                    names = {tool.name for tool in listed.tools}
                    expect(EXPECTED_TOOLS <= names, f"tools: {sorted(names)}")
                    for tool in listed.tools:
                        expect(tool.input_schema.get("type") == "object", f"{tool.name} input schema")
                        expect(tool.output_schema is not None, f"{tool.name} has no output schema")

                async def plan():
                    result = await session.call_tool(
                        "plan_workflow", {"workflow": str(workflow), "repo": str(repo)}
                    )
                    expect(not result.is_error, text_of(result))
                    data = result.structured_content
                    expect(data["clean"] is True, data["violations"])
                    expect(data["agents_planned"] == 9, data["agents_planned"])
                    expect(data["files_in_scope"] > 0, data["files_in_scope"])
                    expect(data["estimated_dollars"] > 0, data["estimated_dollars"])
                    expect(data["plan_sha256"].startswith("sha256:"), data["plan_sha256"])
                    expect(Path(data["plan_path"]).exists(), data["plan_path"])
                    expect(len(data["report"]["agents"]) == 9, "report rows")
                    expect("Planned 9 agents" in text_of(result), text_of(result))
                    # A dry run changes nothing in the repository.
                    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"],
                                            capture_output=True, text=True, check=True).stdout
                    expect(status == "", f"git status after planning: {status!r}")
                    state["plan"] = data

                async def refusals():
                    before = runs_on_disk(repo)
                    bogus = "sha256:" + "0" * 64
                    result = await session.call_tool(
                        "start_run", {"workflow": str(workflow), "repo": str(repo), "plan_sha256": bogus}
                    )
                    expect(result.is_error, "a start without a reviewed plan was accepted")
                    expect("plan_workflow first" in text_of(result), text_of(result))
                    result = await session.call_tool(
                        "plan_workflow", {"workflow": str(stray), "repo": str(repo)}
                    )
                    expect(result.is_error, "a workflow outside the roots was accepted")
                    expect("outside the server's roots" in text_of(result), text_of(result))
                    result = await session.call_tool(
                        "run_status", {"repo": str(repo), "run_id": "20990101T000000Z-000000"}
                    )
                    expect(result.is_error and "no run" in text_of(result), text_of(result))
                    result = await session.call_tool(
                        "cancel_run", {"repo": str(repo), "run_id": "20990101T000000Z-000000"}
                    )
                    expect(result.is_error, "cancel of an unknown run")
                    # A tampered plan: its bytes no longer hash to the reviewed sha256.
                    plan_path = Path(state["plan"]["plan_path"])
                    original = plan_path.read_bytes()
                    plan_path.write_bytes(original + b"\n")
                    result = await session.call_tool(
                        "start_run",
                        {"workflow": str(workflow), "repo": str(repo),
                         "plan_sha256": state["plan"]["plan_sha256"]},
                    )
                    plan_path.write_bytes(original)
                    expect(result.is_error and "edited after its review" in text_of(result),
                           text_of(result))
                    expect(runs_on_disk(repo) == before, "a refused start wrote a run")

                async def start_and_follow():
                    started = time.monotonic()
                    result = await session.call_tool(
                        "start_run",
                        {"workflow": str(workflow), "repo": str(repo),
                         "plan_sha256": state["plan"]["plan_sha256"]},
                    )
                    took = time.monotonic() - started
                    expect(not result.is_error, text_of(result))
                    expect(took < 5, f"start_run took {took:.1f}s")
                    run_id = result.structured_content["run_id"]
                    expect(result.structured_content["agents"] == 9, result.structured_content)
                    state["run_id"] = run_id
                    # A second start on the busy repository is refused.
                    second = await session.call_tool(
                        "start_run",
                        {"workflow": str(workflow), "repo": str(repo),
                         "plan_sha256": state["plan"]["plan_sha256"]},
                    )
                    expect(second.is_error and "refusing a live run" in text_of(second),
                           text_of(second))
                    seen_active = False
                    deadline = time.monotonic() + 120
                    while True:
                        polled = time.monotonic()
                        status = await session.call_tool(
                            "run_status", {"repo": str(repo), "run_id": run_id}
                        )
                        expect(time.monotonic() - polled < 5, "run_status blocked")
                        expect(not status.is_error, text_of(status))
                        data = status.structured_content
                        seen_active |= data["active"]
                        if data["status"] != "running" and not data["active"]:
                            break
                        expect(time.monotonic() < deadline, f"still {data} after 120 s")
                        await asyncio.sleep(0.3)
                    expect(seen_active, "the run was never reported active")
                    expect(data["status"] == "completed", data)
                    expect(data["done"] == 9 and data["failed"] == 0, data)
                    expect(data["tokens"] > 0 and data["dollars"] > 0, data)

                    result = await session.call_tool(
                        "run_result", {"repo": str(repo), "run_id": run_id}
                    )
                    expect(not result.is_error, text_of(result))
                    out = result.structured_content
                    expect(out["status"] == "completed", out["status"])
                    expect(len(out["agents"]) == 9, len(out["agents"]))
                    expect(out["summary"]["out_of_scope"] == [], out["summary"])
                    expect(out["run"]["agents"]["success"] == data["done"], "result vs status")
                    agent = out["agents"][0]["agent_id"]
                    one = await session.call_tool(
                        "run_result", {"repo": str(repo), "run_id": run_id, "agent_id": agent}
                    )
                    expect(not one.is_error and one.structured_content["agents"]["agent_id"] == agent,
                           text_of(one))

                    listed = await session.call_tool("list_runs", {"repo": str(repo)})
                    expect(not listed.is_error, text_of(listed))
                    ids = [run["run_id"] for run in listed.structured_content["runs"]]
                    expect(run_id in ids, ids)
                    # The agents' changes are in the work tree.
                    changed = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"],
                                             capture_output=True, text=True, check=True).stdout
                    expect(len(changed.splitlines()) >= 8, changed)
                    # Its traces were sent before the run was reported ended.
                    roots = traced_roots(traces)
                    expect(roots.get(run_id) == "invoke_workflow quickstart", roots)

                async def items():
                    items_wf = tickets / "workflow.yaml"
                    result = await session.call_tool(
                        "plan_workflow", {"workflow": str(items_wf), "repo": str(tickets)}
                    )
                    expect(not result.is_error, text_of(result))
                    data = result.structured_content
                    expect(data["report"]["kind"] == "items", data["report"])
                    expect(data["report"]["items"] == 300, data["report"]["items"])
                    chunks = data["agents_planned"]
                    expect(chunks == data["report"]["chunks"] and chunks > 1, data["report"])
                    expect(data["estimated_dollars"] > 0, data)
                    expect("300 items" in text_of(result), text_of(result))
                    sha = data["plan_sha256"]
                    # An input outside the roots is refused.
                    result = await session.call_tool(
                        "plan_workflow", {"workflow": str(leaky), "repo": str(tickets)}
                    )
                    expect(result.is_error and "items.input.path" in text_of(result), text_of(result))
                    # The input changed after review: a different job, refused.
                    source = tickets / "tickets.jsonl"
                    original = source.read_bytes()
                    source.write_bytes(original.replace(b"invoice", b"INVOICE", 1))
                    result = await session.call_tool(
                        "start_run", {"workflow": str(items_wf), "repo": str(tickets), "plan_sha256": sha}
                    )
                    source.write_bytes(original)
                    expect(result.is_error and "changed since plan_workflow" in text_of(result),
                           text_of(result))
                    expect(not (tickets / ".fanout" / "runs").exists()
                           or runs_on_disk(tickets) == [], runs_on_disk(tickets))
                    result = await session.call_tool(
                        "start_run", {"workflow": str(items_wf), "repo": str(tickets), "plan_sha256": sha}
                    )
                    expect(not result.is_error, text_of(result))
                    run_id = result.structured_content["run_id"]
                    deadline = time.monotonic() + 120
                    while True:
                        status = await session.call_tool(
                            "run_status", {"repo": str(tickets), "run_id": run_id}
                        )
                        expect(not status.is_error, text_of(status))
                        data = status.structured_content
                        if not data["active"] and data["status"] != "running":
                            break
                        expect(time.monotonic() < deadline, data)
                        await asyncio.sleep(0.3)
                    expect(data["status"] == "completed", data)
                    result = await session.call_tool(
                        "run_result", {"repo": str(tickets), "run_id": run_id}
                    )
                    expect(not result.is_error, text_of(result))
                    summary = result.structured_content["summary"]
                    expect(summary["items"] == 300 and summary["succeeded"] == 300, summary)
                    results = (tickets / ".fanout" / "runs" / run_id / "results.jsonl").read_text()
                    expect(len(results.splitlines()) == 300, "results.jsonl lines")
                    expect("300 items: 300 succeeded" in text_of(result), text_of(result))
                    roots = traced_roots(traces)
                    expect(roots.get(run_id, "").startswith("invoke_workflow"), roots)

                await check("tools listed with input and output schemas", tools())
                await check("plan_workflow returns the dry-run report and the plan hash", plan())
                await check("refusals are tool errors and write nothing", refusals())
                await check("start_run returns at once; status reaches completed; result and list agree",
                            start_and_follow())
                await check("an item workflow: reviewed job, changed input refused, run to completed",
                            items())

        async def cancel_and_resume_items():
            # A slow simulator (2.5 s a call), so the cancel lands while chunks are in flight
            # and planning lasts long enough for progress notifications.
            slow = StdioServerParameters(
                command=BIN,
                args=["mcp", "--sim", "--scenario", str(scenario), "--sim-latency-ms", "2500",
                      "--root", str(work)],
                cwd=str(work),
            )
            items_wf = tickets / "workflow.yaml"
            async with stdio_client(slow) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    notes = []

                    async def on_progress(progress, total, message):
                        notes.append((progress, message))

                    planned = await session.call_tool(
                        "plan_workflow", {"workflow": str(workflow), "repo": str(repo)},
                        progress_callback=on_progress,
                    )
                    expect(not planned.is_error, text_of(planned))
                    expect(len(notes) >= 1 and "planning" in (notes[0][1] or ""), notes)
                    plan = await session.call_tool(
                        "plan_workflow", {"workflow": str(items_wf), "repo": str(tickets)}
                    )
                    sha = plan.structured_content["plan_sha256"]
                    started = await session.call_tool(
                        "start_run", {"workflow": str(items_wf), "repo": str(tickets), "plan_sha256": sha}
                    )
                    expect(not started.is_error, text_of(started))
                    run_id = started.structured_content["run_id"]
                    await asyncio.sleep(0.5)
                    cancelled = await session.call_tool(
                        "cancel_run", {"repo": str(tickets), "run_id": run_id}
                    )
                    expect(not cancelled.is_error, text_of(cancelled))
                    deadline = time.monotonic() + 60
                    while True:
                        status = await session.call_tool(
                            "run_status", {"repo": str(tickets), "run_id": run_id}
                        )
                        data = status.structured_content
                        if not data["active"]:
                            break
                        expect(time.monotonic() < deadline, data)
                        await asyncio.sleep(0.3)
                    expect(data["status"] == "cancelled", data)
                    resumed = await session.call_tool(
                        "resume_run", {"repo": str(tickets), "run_id": run_id}
                    )
                    expect(not resumed.is_error, text_of(resumed))
                    deadline = time.monotonic() + 120
                    while True:
                        status = await session.call_tool(
                            "run_status", {"repo": str(tickets), "run_id": run_id}
                        )
                        data = status.structured_content
                        if not data["active"] and data["status"] != "running":
                            break
                        expect(time.monotonic() < deadline, data)
                        await asyncio.sleep(0.3)
                    expect(data["status"] == "completed", data)
                    results = (tickets / ".fanout" / "runs" / run_id / "results.jsonl").read_text()
                    ids = [json.loads(line)["id"] for line in results.splitlines()]
                    expect(len(ids) == 300 and len(set(ids)) == 300, f"{len(ids)} results")

        await check("progress while planning; an item run cancelled, then resumed to completion",
                    cancel_and_resume_items())

        async def over_http():
            server = subprocess.Popen(
                [BIN, "mcp", "--http", "127.0.0.1:0", "--sim", "--root", str(work)],
                cwd=str(work), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True,
            )
            try:
                line = server.stderr.readline().strip()
                expect(line.startswith("fanout mcp listening on http://"), line)
                url = line.rsplit(" ", 1)[-1]
                async with streamable_http_client(url) as streams:
                    read, write = streams[0], streams[1]
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        listed = await session.list_tools()
                        expect(EXPECTED_TOOLS <= {tool.name for tool in listed.tools}, "tools over HTTP")
                        runs = await session.call_tool("list_runs", {"repo": str(repo)})
                        expect(not runs.is_error, text_of(runs))
                        ids = [run["run_id"] for run in runs.structured_content["runs"]]
                        expect(state.get("run_id") in ids, ids)
            finally:
                server.terminate()
                server.wait(timeout=10)

        await check("the same tools over streamable HTTP (--http)", over_http())
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)

    failed = sum(1 for _, err in results if err)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
