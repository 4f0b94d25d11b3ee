#!/usr/bin/env python3
"""The run report in a real browser: headless Chromium, driven over the Chrome DevTools
Protocol (`--remote-debugging-pipe`, so no port and no extra package).

    report_check.py FANOUT                        the check `scripts/test` runs
    report_check.py FANOUT --agents 10000 --time  how long a report of N agents takes to load
    report_check.py FANOUT --quickstart FILE.png  the README's screenshot of the quickstart

The check first proves it can fail: a crafted page with a console error, an uncaught
exception and a missing image must be flagged on every count, and a wrong number of
`data-agent` elements must be flagged. Then it makes a real run through the CLI with the
built-in simulator (`--sim --scenario`): a reviewed plan of 200 agents in three dependency
waves, some of which fail every attempt, stray outside their scope (denied) or meet a 429.
It writes the run's report with `fanout report`, opens it from `file://` and checks: no
console error, exception or failed load; one `[data-agent]` element per agent attempt the run
store has (`fanout show RUN --json`), each with a tooltip giving its tokens, dollars, files,
tools and denials (the denials as the store counts them); a bar colour per status; the
store's checkpoints on the time axis; an inline script inserted into the page refused by its
Content-Security-Policy. The page is saved as
`target/report-check/report-200.png` (and `.html`) for inspection.
"""

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]
VIEWPORT = (1280, 900)


class CheckFailed(Exception):
    pass


class Browser:
    """One headless Chromium, spoken to over its DevTools pipe (fd 3 in, fd 4 out; each
    message is JSON ended by a NUL byte)."""

    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="fanout-chromium-")
        to_browser_read, self.to_browser = os.pipe()
        self.from_browser, from_browser_write = os.pipe()

        def child_fds():
            # The protocol's fixed descriptors: 3 is read by the browser, 4 written by it.
            # Inheritable: every other descriptor of ours is closed on exec.
            read_end, write_end = os.dup(to_browser_read), os.dup(from_browser_write)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.log = open(os.path.join(self.profile, "chromium.log"), "wb")
        self.process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, "--remote-debugging-pipe",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            close_fds=False, preexec_fn=child_fds)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self.buffer = b""
        self.next_id = 0
        self.events = []
        self.session = None

    def _read_message(self, deadline):
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise CheckFailed("Chromium did not answer in time")
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise CheckFailed(f"Chromium closed its DevTools pipe (log: {self.log.name})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method, params=None, session=True, timeout=120):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise CheckFailed(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method, timeout=120):
        deadline = time.monotonic() + timeout
        for index, event in enumerate(self.events):
            if event["method"] == method:
                return self.events.pop(index)
        while True:
            reply = self._read_message(deadline)
            if reply.get("method") == method:
                return reply
            if "method" in reply:
                self.events.append(reply)

    def open_page(self):
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.send("Target.attachToTarget",
                             {"targetId": target["targetId"], "flatten": True}, session=False)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        width, height = VIEWPORT
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate",
                           {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CheckFailed(f"evaluating {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self):
        try:
            self.send("Browser.close", session=False, timeout=10)
        except (CheckFailed, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self.to_browser, self.from_browser):
            os.close(fd)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        try:
            self.open_page()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_):
        self.close()


def problems_in(events):
    """Console errors, uncaught exceptions and failed loads among DevTools events."""
    found = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(arg.get("value", arg.get("description", "")))
                            for arg in params.get("args", []))
            found.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            found.append(f"uncaught exception: {text}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"log error ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.loadingFailed":
            found.append(f"failed load: {params.get('errorText')} ({params.get('type')})")
    return found


def inspect_page(path, screenshot=None, down_to=None, probe_script=False):
    """Load `path` from file://: DevTools problems, the `[data-agent]` count, the bar
    colours, load and paint times; optionally save a PNG screenshot of the whole page, or of
    its top down to the end of the element `down_to` (a CSS selector). With `probe_script`,
    then insert an inline script as injected markup would and say whether it ran."""
    url = "file://" + os.path.abspath(path)
    with Browser() as browser:
        started = time.monotonic()
        browser.send("Page.navigate", {"url": url})
        browser.wait_for("Page.loadEventFired")
        loaded = time.monotonic() - started
        # Two animation frames after the load event: the page has been laid out and painted.
        browser.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        painted = time.monotonic() - started
        facts = browser.evaluate(r"""(() => {
            const bars = [...document.querySelectorAll('[data-agent]')];
            const fills = {};
            for (const bar of bars) {
                const status = [...bar.classList].find(c => c.startsWith('s-')) || '';
                fills[status + ' ' + getComputedStyle(bar).fill] = 1;
            }
            const nav = performance.getEntriesByType('navigation')[0];
            const paint = performance.getEntriesByType('paint')
                .find(p => p.name === 'first-contentful-paint');
            const denials = {};
            for (const bar of bars) {
                const title = bar.querySelector('title');
                const found = title && title.textContent.match(/\ndenials: (\d+)/);
                if (found) denials[bar.dataset.agent] =
                    (denials[bar.dataset.agent] || 0) + Number(found[1]);
            }
            const tooltip = /tokens [\d,]+ in, [\d,]+ out · \$[\d.]+\nfiles: .*\ntools: .*\ndenials: \d+/;
            return {count: bars.length,
                    with_tooltip: bars.filter(b => b.querySelector('title')
                        && tooltip.test(b.querySelector('title').textContent)).length,
                    denials: denials,
                    checkpoints: document.querySelectorAll('#timeline line.ck').length,
                    fills: Object.keys(fills),
                    load_event_ms: nav ? nav.loadEventEnd : null,
                    first_contentful_paint_ms: paint ? paint.startTime : null,
                    height: document.documentElement.scrollHeight};
        })()""")
        shot_started = time.monotonic()
        if screenshot:
            height = facts["height"]
            if down_to:
                height = browser.evaluate(
                    f"Math.ceil(document.querySelector({json.dumps(down_to)})"
                    ".getBoundingClientRect().bottom + scrollY + 16)")
            params = {"format": "png", "captureBeyondViewport": True,
                      "clip": {"x": 0, "y": 0, "width": VIEWPORT[0], "height": height,
                               "scale": 1}}
            shot = browser.send("Page.captureScreenshot", params)
            os.makedirs(os.path.dirname(os.path.abspath(screenshot)), exist_ok=True)
            with open(screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
        facts["screenshot_s"] = time.monotonic() - shot_started
        # Anything still queued on the pipe arrives with this last round trip.
        browser.evaluate("1")
        facts["problems"] = problems_in(browser.events)
        if probe_script:
            browser.events.clear()
            facts["injected_script_ran"] = browser.evaluate(
                "(() => { const s = document.createElement('script');"
                " s.textContent = 'window.injectedScriptRan = true';"
                " document.body.append(s); return window.injectedScriptRan === true; })()")
            browser.evaluate("1")
            facts["probe_problems"] = problems_in(browser.events)
        facts["loaded_s"] = loaded
        facts["painted_s"] = painted
    return facts


def verdict(facts, expected_count):
    """What is wrong with a page: its problems, and a `[data-agent]` count that differs."""
    wrong = list(facts["problems"])
    if facts["count"] != expected_count:
        wrong.append(f"{facts['count']} [data-agent] elements, expected {expected_count}")
    if facts["with_tooltip"] != facts["count"]:
        wrong.append(f"only {facts['with_tooltip']} of {facts['count']} bars have a tooltip "
                     "with tokens, dollars, files, tools and denials")
    return wrong


def policy_verdict(facts):
    """The page's Content-Security-Policy must stop a script that escaped into the page."""
    if facts["injected_script_ran"] or not any(
            "Content Security Policy" in line for line in facts["probe_problems"]):
        return ["an inline script inserted into the page ran, or was refused without a "
                f"policy violation: {facts['probe_problems']}"]
    return []


def self_test(work):
    """The check must flag a broken page: a console error, an exception, a missing image, a
    wrong count, bars without their tooltip, a page without a policy that would run an
    injected script. And pass a clean one."""
    broken = os.path.join(work, "broken.html")
    with open(broken, "w") as f:
        f.write("<!DOCTYPE html><html><head><title>broken</title></head><body>"
                "<svg><rect data-agent='a'><title>a</title></rect>"
                "<rect data-agent='b'><title>b</title></rect></svg>"
                "<img src='missing-on-purpose.png'>"
                "<script>console.error('deliberate console error')</script>"
                "<script>throw new Error('deliberate exception')</script>"
                "</body></html>")
    facts = inspect_page(broken)
    wrong = verdict(facts, 3)
    for needle in ("deliberate console error", "deliberate exception",
                   "missing-on-purpose.png", "2 [data-agent] elements, expected 3",
                   "only 0 of 2 bars have a tooltip"):
        if not any(needle in line for line in wrong):
            raise CheckFailed(f"self-test: the check did not flag {needle!r}; it found {wrong}")
    clean = os.path.join(work, "clean.html")
    with open(clean, "w") as f:
        f.write("<!DOCTYPE html><html><head><title>clean</title></head><body>"
                "<svg><rect data-agent='a'><title>a · attempt 1 · success\n"
                "tokens 1,000 in, 20 out · $0.0010\nfiles: src/a.ts\ntools: read_file\n"
                "denials: 0</title></rect></svg></body></html>")
    facts = inspect_page(clean, probe_script=True)
    wrong = verdict(facts, 1)
    if wrong:
        raise CheckFailed(f"self-test: a clean page was flagged: {wrong}")
    if not policy_verdict(facts):
        raise CheckFailed("self-test: a page without a Content-Security-Policy ran an "
                          "injected script unflagged")
    print("report check: self-test flags a console error, an exception, a failed load, "
          "a wrong count, bare tooltips and a page that runs an injected script; passes a "
          "clean page")


def run(command, expect=(0,), **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode not in expect:
        raise CheckFailed(f"{' '.join(command)} exited {result.returncode}:\n"
                          f"{result.stdout}\n{result.stderr}")
    return result


def git(repo, *args):
    run(["git", "-C", repo, "-c", "user.name=fanout-check",
         "-c", "user.email=check@fanout.invalid", "-c", "gc.auto=0", *args])


def task_id(index, agents):
    """Three waves: the last tenth documents, the tenth before it indexes, the rest edit. Among
    the editors, every 50th from 7 meets a provider error on its first attempt (retried), every
    50th from 19 does not report the file it wrote (rolled back), every 50th from 32 reports
    success without doing anything (a failure) and every 40th from 3 strays outside its scope once (denied)."""
    if index >= agents - agents // 10:
        return f"docs-{index:05}"
    if index >= agents - 2 * (agents // 10):
        return f"index-{index:05}"
    if index % 50 == 7:
        return f"flaky-{index:05}"
    if index % 50 == 19:
        return f"sloppy-{index:05}"
    if index % 50 == 32:
        return f"broken-{index:05}"
    if index % 40 == 3:
        return f"stray-{index:05}"
    return f"edit-{index:05}"


def many_agent_run(fanout, work, agents, latency_ms):
    """A live `--sim` run of a reviewed plan of `agents` agents; returns (repo, run_id)."""
    repo = os.path.join(work, "repo")
    os.makedirs(os.path.join(repo, "src"))
    for index in range(agents):
        with open(os.path.join(repo, "src", f"mod_{index:05}.txt"), "w") as f:
            f.write(f"module {index}\nvalue = {index * 7}\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "generated")

    ids = [task_id(index, agents) for index in range(agents)]
    subtasks = []
    for index, task in enumerate(ids):
        depends_on = []
        if task.startswith("index-"):
            # Each indexer waits for two editors that succeed.
            depends_on = [ids[j] for j in (index % 100, (index + 37) % 100)
                          if ids[j].startswith("edit-")][:2]
        elif task.startswith("docs-"):
            depends_on = [ids[index - agents // 10]]
        subtasks.append({
            "task_id": task,
            "description": f"Update the value in src/mod_{index:05}.txt",
            "scope": [f"src/mod_{index:05}.txt"],
            "tools": ["read_file", "list_files", "write_file"],
            "mode": "default" if index % 3 == 0 else "fast",
            "depends_on": depends_on,
        })
    plan = os.path.join(work, "plan.json")
    with open(plan, "w") as f:
        json.dump({"workflow": "report-check", "subtasks": subtasks}, f)

    workflow = os.path.join(work, "workflow.yaml")
    with open(workflow, "w") as f:
        f.write(
            f"workflow:\n  name: report-check\n  max_parallel_agents: {min(max(agents // 5, 1), 1000)}\n"
            "  agent_permissions:\n    file_access: scoped\n    external_api: deny\n"
            "    shell_exec: deny\n  logging:\n    level: normal\n"
            "    destination: ./.fanout/logs/check-{timestamp}.jsonl\n"
            "  rollback:\n    on_failure: checkpoint\n    checkpoint_interval: 25\n"
            "  budgets:\n    agent:\n      max_turns: 8\n")

    own_file = r"'Files you may change \(nothing else\):\n- (?P<file>\S+)'"
    rules = [
        # Editors 120-129 meet one 429 on their second turn's first try.
        f"  - match: {{system: 'Task edit-0012\\d:', turn: 2, attempt: 0}}\n"
        "    error: {status: 429, message: slow down, headers: {retry-after: '0'}}\n",
        # Flaky agents meet a provider error that is not retried after writing their file (so
        # the attempt is rolled back); the agent's next attempt succeeds.
        f"  - match: {{system: 'Task flaky-', turn: 4}}\n    times: {agents // 50}\n"
        "    error: {status: 400, message: simulated bad request}\n",
        # Sloppy agents do not report the file they wrote: rolled back.
        "  - match: {system: 'Task sloppy-', turn: 4}\n"
        "    tool_use: {name: report_result, input: {status: success, summary: done, "
        "files_changed: []}}\n",
        # Broken agents claim success without a tool call: a failure with nothing to undo.
        "  - match: {system: 'Task broken-', turn: 1}\n"
        "    tool_use: {name: report_result, input: {status: success, summary: done, "
        "files_changed: []}}\n",
        # Stray agents try a file outside their scope first (denied).
        "  - match: {system: 'Task stray-', turn: 2}\n"
        "    tool_use: {name: write_file, input: {path: README.md, content: \"stray\\n\"}}\n",
        f"  - match: {{system: {own_file}, turn: 1}}\n"
        "    tool_use: {name: read_file, input: {path: \"${file}\"}}\n",
        f"  - match: {{system: {own_file}, turn: 2}}\n"
        "    tool_use: {name: list_files, input: {pattern: \"${file}\"}}\n",
        f"  - match: {{system: {own_file}, turn: 3}}\n"
        "    tool_use: {name: write_file, input: {path: \"${file}\", content: \"updated\\n\"}}\n",
        f"  - match: {{system: {own_file}, turn: 4}}\n"
        "    tool_use: {name: report_result, input: {status: success, summary: \"updated "
        "${file}\", files_changed: [\"${file}\"]}}\n",
    ]
    scenario = os.path.join(work, "scenario.yaml")
    with open(scenario, "w") as f:
        f.write("rules:\n" + "".join(rules))

    # A partial run (exit 5): the broken agents fail.
    run([fanout, "run", workflow, "--plan", plan, "--repo", repo, "--scenario", scenario,
         "--sim-latency-ms", str(latency_ms)], expect=(0, 5))
    runs = json.loads(run([fanout, "runs", "--repo", repo, "--json"]).stdout)
    return repo, runs[0]["run_id"]


def write_report(fanout, repo, run_id, page):
    run([fanout, "report", run_id, "--repo", repo, "-o", page])


def show(fanout, repo, run_id):
    """`fanout show RUN --json`: the run store's record of the run."""
    return json.loads(run([fanout, "show", run_id, "--repo", repo, "--json"]).stdout)


def check(fanout, agents, out_dir):
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fanout-report-check-") as work:
        self_test(work)
        repo, run_id = many_agent_run(fanout, work, agents, latency_ms=20)
        page = os.path.join(work, "report.html")
        write_report(fanout, repo, run_id, page)
        shown = show(fanout, repo, run_id)
        expected = len(shown["agent_runs"])
        if expected <= agents:
            raise CheckFailed(f"{expected} attempts for {agents} agents: the flaky agents "
                              " should have been tried again")
        screenshot = os.path.join(out_dir, f"report-{agents}.png")
        facts = inspect_page(page, screenshot=screenshot, probe_script=True)
        wrong = verdict(facts, expected)
        wrong += policy_verdict(facts)
        statuses = {row["status"] for row in shown["agent_runs"]}
        fills = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in facts["fills"]}
        for status in statuses:
            if f"s-{status}" not in fills:
                wrong.append(f"no bar drawn with status {status}")
        if len(set(fills.values())) != len(fills):
            wrong.append(f"two statuses share a colour: {fills}")
        if facts["checkpoints"] != len(shown["checkpoints"]):
            wrong.append(f"{facts['checkpoints']} checkpoints on the time axis, "
                         f"{len(shown['checkpoints'])} in the store")
        drawn_denials = {agent: n for agent, n in facts["denials"].items() if n}
        if drawn_denials != shown["denials_by_agent"]:
            wrong.append(f"denials in the tooltips {drawn_denials}, "
                         f"in the store {shown['denials_by_agent']}")
        if wrong:
            raise CheckFailed("the report of run " + run_id + ":\n  " + "\n  ".join(wrong))
        shutil.copy(page, os.path.join(out_dir, f"report-{agents}.html"))
    print(f"report check: {agents} agents, {expected} attempts, {expected} bars with their "
          f"tooltips ({', '.join(sorted(fills))}), {facts['checkpoints']} checkpoints; "
          "no console error, exception or failed load; "
          f"loaded in {facts['loaded_s']:.2f} s; screenshot {screenshot} "
          f"({time.monotonic() - started:.1f} s in all)")


def time_report(fanout, agents, repeats):
    """Load-and-paint time of the report of an `agents`-agent run, `repeats` times."""
    with tempfile.TemporaryDirectory(prefix="fanout-report-time-") as work:
        made = time.monotonic()
        repo, run_id = many_agent_run(fanout, work, agents, latency_ms=20)
        made = time.monotonic() - made
        page = os.path.join(work, "report.html")
        written = time.monotonic()
        write_report(fanout, repo, run_id, page)
        written = time.monotonic() - written
        expected = len(show(fanout, repo, run_id)["agent_runs"])
        size = os.path.getsize(page)
        print(f"{agents} agents ({expected} attempts): run {made:.1f} s, "
              f"`fanout report` {written:.2f} s, page {size / 1e6:.1f} MB")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for _ in range(repeats):
            facts = inspect_page(page, screenshot=os.path.join(work, "page.png"))
            wrong = verdict(facts, expected)
            if wrong:
                raise CheckFailed("\n".join(wrong))
            print(f"  load event {facts['load_event_ms']:.0f} ms, first contentful paint "
                  f"{facts['first_contentful_paint_ms']:.0f} ms, painted (two frames after "
                  f"load) {facts['painted_s'] * 1000:.0f} ms after navigating; the whole "
                  f"{facts['height']} px page rendered to PNG in "
                  f"{facts['screenshot_s'] * 1000:.0f} ms")


def quickstart_screenshot(fanout, target):
    """The quickstart as `scripts/demo` runs it, its report, and a screenshot of its top."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    example = os.path.join(root, "examples", "quickstart")
    with tempfile.TemporaryDirectory(prefix="fanout-quickstart-") as work:
        repo = os.path.join(work, "shop-api")
        shutil.copytree(os.path.join(example, "repo"), repo)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "initial")
        run([fanout, "run", os.path.join(example, "workflow.yaml"), "--repo", repo,
             "--sim", "--scenario", os.path.join(example, "scenario.yaml"),
             "--sim-latency-ms", "300"])
        run_id = json.loads(run([fanout, "runs", "--repo", repo, "--json"]).stdout)[0]["run_id"]
        page = os.path.join(work, "report.html")
        write_report(fanout, repo, run_id, page)
        expected = len(show(fanout, repo, run_id)["agent_runs"])
        # The top of the page: the header, the timeline, the dependency waves and requests.
        facts = inspect_page(page, screenshot=target, down_to="#requests")
        wrong = verdict(facts, expected)
        if wrong:
            raise CheckFailed("\n".join(wrong))
    print(f"quickstart report: {target} ({os.path.getsize(target) // 1024} KiB)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fanout", help="the fanout binary")
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--time", action="store_true",
                        help="measure how long the report takes to load and paint")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quickstart", metavar="PNG",
                        help="screenshot the quickstart's report to PNG")
    parser.add_argument("--out", default="target/report-check",
                        help="where the check saves its screenshot and page")
    args = parser.parse_args()
    if not os.access(CHROMIUM, os.X_OK):
        sys.exit(f"error: no {CHROMIUM} (scripts/setup-browser.sh installs it)")
    fanout = os.path.abspath(args.fanout)
    try:
        if args.quickstart:
            quickstart_screenshot(fanout, args.quickstart)
        elif args.time:
            time_report(fanout, args.agents, args.repeats)
        else:
            os.makedirs(args.out, exist_ok=True)
            check(fanout, args.agents, args.out)
    except CheckFailed as failure:
        sys.exit(f"report check FAILED: {failure}")


if __name__ == "__main__":
    main()
