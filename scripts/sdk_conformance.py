#!/usr/bin/env python3
"""Checks that the official Anthropic and OpenAI Python SDKs accept `fanout sim` as the real API.

Usage: sdk_conformance.py BASE_URL   (or FANOUT_SIM_URL=http://127.0.0.1:PORT)

The simulator must run with scripts/sdk_conformance_scenario.yaml. Every check prints PASS or
FAIL; the last line is "N passed, M failed" and the exit status is non-zero on any failure.
"""

import json
import math
import os
import sys
import traceback
import urllib.request

import anthropic
import openai

BASE = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FANOUT_SIM_URL", "")).rstrip("/")
if not BASE:
    print("usage: sdk_conformance.py BASE_URL (or set FANOUT_SIM_URL)", file=sys.stderr)
    sys.exit(2)

MODEL = "claude-fanout-sim"
GPT = "gpt-4o"
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 2},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "days", "unit"],
    },
}
OPENAI_WEATHER = {
    "type": "function",
    "function": {
        "name": WEATHER["name"],
        "description": WEATHER["description"],
        "parameters": WEATHER["input_schema"],
    },
}
EXPECTED_INPUT = {
    "city": "Paris",
    "days": 3,
    "options": {"unit": "celsius", "hours": [6, 12, 18], "note": 'a "quoted" note'},
}
STREAM_TEXT = (
    'Streaming works: ünïcödé, "quotes", back\\slashes and a sentence long enough '
    "to be split into many deltas."
)

ant = anthropic.Anthropic(base_url=BASE, api_key="sk-ant-conformance", max_retries=2)
oai = openai.OpenAI(base_url=BASE + "/v1", api_key="sk-conformance", max_retries=2)

results = []


def check(name):
    def wrap(fn):
        try:
            fn()
            results.append((name, None))
            print(f"PASS {name}", flush=True)
        except Exception as err:  # noqa: BLE001 - every failure is reported, not raised
            detail = "".join(traceback.format_exception_only(type(err), err)).strip()
            results.append((name, detail))
            print(f"FAIL {name}: {detail}", flush=True)
        return fn

    return wrap


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def tokens(text):
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def exchanges():
    with urllib.request.urlopen(BASE + "/sim/exchanges") as response:
        return json.load(response)


def exchanges_for(endpoint, text):
    out = []
    for ex in exchanges():
        request = ex.get("request")
        if ex["endpoint"] != endpoint or not isinstance(request, dict):
            continue
        last = (request.get("messages") or [{}])[-1].get("content")
        if last == text:
            out.append(ex)
    return out


# ---- Anthropic -----------------------------------------------------------------------------


@check("anthropic: plain message")
def _():
    msg = ant.messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "conformance plain"}]
    )
    expect(msg.type == "message" and msg.role == "assistant", f"shape: {msg}")
    expect(msg.content[0].type == "text", f"block: {msg.content}")
    expect(msg.content[0].text == "Hello from the fanout simulator.", msg.content[0].text)
    expect(msg.stop_reason == "end_turn", msg.stop_reason)
    expect(msg.usage.input_tokens == tokens("conformance plain"), msg.usage)
    expect(msg.usage.output_tokens == tokens("Hello from the fanout simulator."), msg.usage)
    expect((msg._request_id or "").startswith("req_"), f"request id {msg._request_id}")


@check("anthropic: streaming text (messages.stream)")
def _():
    pieces = []
    with ant.messages.stream(
        model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "conformance stream text"}]
    ) as stream:
        for text in stream.text_stream:
            pieces.append(text)
        final = stream.get_final_message()
    expect(len(pieces) > 1, f"expected several deltas, got {len(pieces)}")
    expect("".join(pieces) == STREAM_TEXT, "".join(pieces))
    expect(final.content[0].text == STREAM_TEXT, final.content[0].text)
    expect(final.stop_reason == "end_turn", final.stop_reason)
    expect(final.usage.output_tokens == tokens(STREAM_TEXT), final.usage)
    expect(final.usage.input_tokens == tokens("conformance stream text"), final.usage)


@check("anthropic: streaming tool use (input assembled)")
def _():
    with ant.messages.stream(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER],
        messages=[{"role": "user", "content": "conformance stream tool for Paris"}],
    ) as stream:
        json_deltas = sum(1 for event in stream if event.type == "input_json")
        final = stream.get_final_message()
    block = final.content[0]
    expect(block.type == "tool_use" and block.name == "get_weather", f"block {block}")
    expect(block.input == EXPECTED_INPUT, f"input {block.input}")
    expect(block.id.startswith("toolu_"), block.id)
    expect(final.stop_reason == "tool_use", final.stop_reason)
    expect(json_deltas > 1, f"expected several input_json events, got {json_deltas}")


@check("anthropic: tool-use round trip")
def _():
    question = {"role": "user", "content": "conformance tool for Paris"}
    first = ant.messages.create(model=MODEL, max_tokens=200, tools=[WEATHER], messages=[question])
    expect(first.stop_reason == "tool_use", first.stop_reason)
    call = first.content[0]
    expect(call.input == EXPECTED_INPUT, call.input)
    second = ant.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER],
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny in Paris"}],
            },
        ],
    )
    expect(second.content[0].text == "It is sunny in Paris.", second.content[0].text)
    # A tool_result that answers nothing is refused like the real API does.
    try:
        ant.messages.create(
            model=MODEL,
            max_tokens=200,
            tools=[WEATHER],
            messages=[
                question,
                {"role": "assistant", "content": first.content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_nope", "content": "x"}]},
            ],
        )
        raise AssertionError("a mismatched tool_result was accepted")
    except anthropic.BadRequestError as err:
        expect("toolu_nope" in str(err), str(err))


@check("anthropic: forced tool default answer")
def _():
    msg = ant.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "anything at all"}],
    )
    block = msg.content[0]
    expect(block.type == "tool_use" and block.name == "get_weather", block)
    expect(len(block.input["city"]) >= 2, block.input)
    expect(1 <= block.input["days"] <= 7, block.input)
    expect(block.input["unit"] in ("celsius", "fahrenheit"), block.input)


@check("anthropic: count_tokens")
def _():
    messages = [{"role": "user", "content": "conformance plain"}]
    counted = ant.messages.count_tokens(model=MODEL, messages=messages, tools=[WEATHER], system="Be brief.")
    created = ant.messages.create(
        model=MODEL, max_tokens=50, messages=messages, tools=[WEATHER], system="Be brief."
    )
    expect(counted.input_tokens == created.usage.input_tokens, f"{counted} vs {created.usage}")
    expect(counted.input_tokens > tokens("conformance plain"), counted)


@check("anthropic: 429 retried after retry-after")
def _():
    text = "conformance retry anthropic"
    msg = ant.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": text}])
    expect(msg.content[0].text == "Retried fine.", msg.content[0].text)
    seen = exchanges_for("messages", text)
    expect([ex["status"] for ex in seen] == [429, 200], [ex["status"] for ex in seen])
    expect(seen[0]["headers"].get("x-stainless-retry-count") == "0", seen[0]["headers"])
    expect(seen[1]["headers"].get("x-stainless-retry-count") == "1", seen[1]["headers"])
    waited = seen[1]["at_ms"] - seen[0]["at_ms"]
    expect(waited >= 900, f"the SDK waited only {waited} ms")


@check("anthropic: 529 raised as OverloadedError / InternalServerError with max_retries=0")
def _():
    client = ant.with_options(max_retries=0)
    try:
        client.messages.create(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "conformance overloaded"}]
        )
        raise AssertionError("no exception")
    except anthropic.APIStatusError as err:
        expect(err.status_code == 529, err.status_code)
        overloaded = getattr(anthropic, "OverloadedError", None)
        expect(
            isinstance(err, anthropic.InternalServerError)
            or (overloaded is not None and isinstance(err, overloaded)),
            type(err).__name__,
        )
        expect(err.body["type"] == "error", err.body)
        expect(err.body["error"]["type"] == "overloaded_error", err.body)
        expect((err.request_id or "").startswith("req_"), err.request_id)
    seen = exchanges_for("messages", "conformance overloaded")
    expect(len(seen) == 1, f"max_retries=0 must not retry: {len(seen)} attempts")


@check("anthropic: 400 raised as BadRequestError")
def _():
    try:
        ant.messages.create(
            model=MODEL,
            max_tokens=50,
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_time"},
            messages=[{"role": "user", "content": "hi"}],
        )
        raise AssertionError("no exception")
    except anthropic.BadRequestError as err:
        expect(err.status_code == 400, err.status_code)
        expect(err.body["error"]["type"] == "invalid_request_error", err.body)
        expect("get_time" in err.message, err.message)


@check("anthropic: 401 raised as AuthenticationError")
def _():
    client = anthropic.Anthropic(base_url=BASE, api_key="x", max_retries=0)
    try:
        # Omit() removes the SDK's auth headers: the request carries no key at all.
        omit = getattr(anthropic, "Omit", None) or anthropic._types.Omit
        client.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Api-Key": omit(), "Authorization": omit()},
        )
        raise AssertionError("no exception")
    except anthropic.AuthenticationError as err:
        expect(err.body["error"]["type"] == "authentication_error", err.body)


# ---- OpenAI --------------------------------------------------------------------------------


@check("openai: chat completion")
def _():
    resp = oai.chat.completions.create(model=GPT, messages=[{"role": "user", "content": "conformance plain"}])
    expect(resp.object == "chat.completion", resp.object)
    choice = resp.choices[0]
    expect(choice.message.content == "Hello from the fanout simulator.", choice.message.content)
    expect(choice.finish_reason == "stop", choice.finish_reason)
    expect(resp.usage.prompt_tokens == tokens("conformance plain"), resp.usage)
    expect(resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens, resp.usage)
    expect((resp._request_id or "").startswith("req_"), resp._request_id)


@check("openai: streaming with usage chunk")
def _():
    stream = oai.chat.completions.create(
        model=GPT,
        messages=[{"role": "user", "content": "conformance stream text"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, chunks = "", None, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    expect(chunks > 3, chunks)
    expect(text == STREAM_TEXT, text)
    expect(finish == "stop", finish)
    expect(usage is not None and usage.completion_tokens == tokens(STREAM_TEXT), usage)


@check("openai: streaming tool calls (arguments assembled)")
def _():
    stream = oai.chat.completions.create(
        model=GPT,
        tools=[OPENAI_WEATHER],
        messages=[{"role": "user", "content": "conformance stream tool for Paris"}],
        stream=True,
    )
    calls, finish = {}, None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": None, "args": ""})
                if call.id:
                    entry["id"] = call.id
                if call.function and call.function.name:
                    entry["name"] = call.function.name
                if call.function and call.function.arguments:
                    entry["args"] += call.function.arguments
    expect(finish == "tool_calls", finish)
    expect(len(calls) == 1 and calls[0]["name"] == "get_weather", calls)
    expect(json.loads(calls[0]["args"]) == EXPECTED_INPUT, calls[0]["args"])


@check("openai: tool-call round trip")
def _():
    question = {"role": "user", "content": "conformance tool for Paris"}
    first = oai.chat.completions.create(model=GPT, tools=[OPENAI_WEATHER], messages=[question])
    message = first.choices[0].message
    expect(first.choices[0].finish_reason == "tool_calls", first.choices[0].finish_reason)
    call = message.tool_calls[0]
    expect(json.loads(call.function.arguments) == EXPECTED_INPUT, call.function.arguments)
    second = oai.chat.completions.create(
        model=GPT,
        tools=[OPENAI_WEATHER],
        messages=[
            question,
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny in Paris"},
        ],
    )
    expect(second.choices[0].message.content == "It is sunny in Paris.", second.choices[0].message.content)


@check("openai: forced function default answer")
def _():
    resp = oai.chat.completions.create(
        model=GPT,
        tools=[OPENAI_WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "anything at all"}],
    )
    args = json.loads(resp.choices[0].message.tool_calls[0].function.arguments)
    expect(args["unit"] in ("celsius", "fahrenheit") and 1 <= args["days"] <= 7, args)


@check("openai: 429 retried after retry-after")
def _():
    text = "conformance retry openai"
    resp = oai.chat.completions.create(model=GPT, messages=[{"role": "user", "content": text}])
    expect(resp.choices[0].message.content == "Retried fine.", resp.choices[0].message.content)
    seen = exchanges_for("chat_completions", text)
    expect([ex["status"] for ex in seen] == [429, 200], [ex["status"] for ex in seen])
    waited = seen[1]["at_ms"] - seen[0]["at_ms"]
    expect(waited >= 900, f"the SDK waited only {waited} ms")


@check("openai: 400 raised as BadRequestError")
def _():
    try:
        oai.chat.completions.create(
            model=GPT,
            tools=[OPENAI_WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            messages=[{"role": "user", "content": "hi"}],
        )
        raise AssertionError("no exception")
    except openai.BadRequestError as err:
        expect(err.status_code == 400, err.status_code)
        expect(err.type == "invalid_request_error", err.type)
        expect("get_time" in err.message, err.message)


@check("openai: batch through an uploaded input file (files, batches, file content)")
def _():
    lines = [
        {
            "custom_id": f"conformance-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": GPT, "messages": [{"role": "user", "content": f"batch line {i}"}]},
        }
        for i in range(3)
    ]
    lines.append(
        {
            "custom_id": "conformance-bad",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": GPT, "messages": []},
        }
    )
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = oai.files.create(file=("input.jsonl", data), purpose="batch")
    expect(uploaded.id.startswith("file-"), uploaded.id)
    expect(uploaded.bytes == len(data), (uploaded.bytes, len(data)))
    expect(oai.files.content(uploaded.id).content == data, "the input file reads back")
    batch = oai.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = oai.batches.retrieve(batch.id)
    expect(batch.status == "completed", batch.status)
    expect(batch.request_counts.total == 4, batch.request_counts)
    expect(batch.request_counts.completed == 3, batch.request_counts)
    expect(batch.request_counts.failed == 1, batch.request_counts)
    output = [json.loads(l) for l in oai.files.content(batch.output_file_id).text.splitlines()]
    ids = sorted(line["custom_id"] for line in output)
    expect(ids == ["conformance-0", "conformance-1", "conformance-2"], ids)
    for line in output:
        completion = openai.types.chat.ChatCompletion.model_validate(line["response"]["body"])
        expect(completion.choices[0].message.content, completion)
        expect(line["response"]["status_code"] == 200, line)
    errors = [json.loads(l) for l in oai.files.content(batch.error_file_id).text.splitlines()]
    expect([e["custom_id"] for e in errors] == ["conformance-bad"], errors)
    expect(errors[0]["response"]["status_code"] == 400, errors[0])


@check("openai: a batch over a malformed input file fails with line numbers")
def _():
    data = b'not json\n{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {}}\n'
    uploaded = oai.files.create(file=("bad.jsonl", data), purpose="batch")
    batch = oai.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    expect(batch.status == "failed", batch.status)
    found = [(e.code, e.line) for e in batch.errors.data]
    expect(found == [("invalid_json_line", 1), ("mismatched_endpoint", 2)], found)


failed = sum(1 for _, err in results if err)
passed = len(results) - failed
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
