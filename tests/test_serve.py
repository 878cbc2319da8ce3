"""``lab serve`` end to end: a real server process on 127.0.0.1 (ephemeral port) over tiny runs,
spoken to with the official ``openai`` client and with plain HTTP: completions and chat,
streamed and not, usage counts, seeds, stop strings, the template, every bad input's
status and field (and no traceback in the log), API keys, 429 under overload,
a disconnect freeing its slot, and SIGTERM draining the requests in flight."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from lab.serve.protocol import Message, render_chat  # noqa: E402
from lm.model import ModelConfig  # noqa: E402
from test_generate_support import random_model, write_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "pattern-20250101-000000"


class Served:
    """A `lab serve` process; its stdout gives the port, its stderr is kept for the log checks."""

    def __init__(self, run: Path, tmp: Path, *args: str):
        self.log = tmp / f"serve-{time.monotonic_ns()}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "lab", "serve", str(run), "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True, env=env, cwd=tmp)
        line = self.proc.stdout.readline()
        if not line.startswith("serving on "):
            self.proc.kill()
            raise AssertionError(f"lab serve did not start: {line!r} {self.log.read_text()}")
        self.url = line.split()[-1]
        self.run = run
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def client(self, key: str = "none"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def health(self) -> dict:
        return self.http.get("/health").json()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.http.close()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def served(tmp):
    s = Served(write_run(tmp / "pattern"), tmp, "--max-batch", "4")
    yield s
    s.close()
    assert "Traceback" not in s.log.read_text()


@pytest.fixture(scope="module")
def slow(tmp):
    """A wider random model with a long context: a 1000-token request takes seconds on a CPU."""
    cfg = ModelConfig(vocab_size=257, context_length=1024, d_model=128, num_layers=4, num_heads=4, d_ff=256)
    s = Served(write_run(tmp / "slow", random_model(cfg, seed=1)), tmp, "--max-batch", "1", "--max-queue", "1")
    yield s
    s.close()
    assert "Traceback" not in s.log.read_text()


def _sse(lines) -> list:
    out = []
    for line in lines:
        if line.startswith("data: "):
            out.append(line[6:])
    return out


# ----------------------------------------------------------------------------- the endpoints

def test_completion_non_stream_and_stream_with_the_openai_client(served):
    c = served.client()
    r = c.completions.create(model=MODEL, prompt="ab", temperature=0, max_tokens=20)
    assert r.choices[0].text == "c€de ü!" and r.choices[0].finish_reason == "stop"  # ended by <|endoftext|>
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (2, 11, 13)
    chunks = list(c.completions.create(model=MODEL, prompt="ab", temperature=0, max_tokens=5, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "c€d"  # 5 bytes: c, 3 of €, d
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 5 and chunks[-1].usage.prompt_tokens == 2


def test_chat_renders_the_documented_template_and_streams_the_same_reply(served):
    c = served.client()
    messages = [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]  # the context is 24 bytes
    r = c.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=2)
    prompt = render_chat([Message(**m) for m in messages])
    assert prompt == "a\n\nUser: b\nAssistant:"
    assert r.usage.prompt_tokens == len(prompt.encode("utf-8"))  # a byte-level tokenizer
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens <= 2
    stream = c.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=2, stream=True)
    parts = list(stream)
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == r.choices[0].message.content
    assert parts[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_plain_http_stream_is_sse_ending_in_done(served):
    body = {"model": MODEL, "prompt": "ab", "temperature": 0, "max_tokens": 4, "stream": True}
    with served.http.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        data = _sse(resp.iter_lines())
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(ch["object"] == "text_completion" and ch["model"] == MODEL for ch in chunks)
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == "c€"


def test_models_health_and_model_lookup(served):
    c = served.client()
    assert [m.id for m in c.models.list().data] == [MODEL]
    assert c.models.retrieve(MODEL).id == MODEL
    h = served.health()
    assert h["status"] == "ok" and h["slots"] == 4 and h["active"] == 0 and h["queued"] == 0


def test_seeds_reproduce_alone_and_batched(served):
    c = served.client()

    def ask(seed):
        return c.completions.create(model=MODEL, prompt="a", temperature=3.0, max_tokens=16, seed=seed).choices[0].text

    alone = {seed: ask(seed) for seed in (1, 2, 3, 4, 5, 6)}
    assert len(set(alone.values())) > 1
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # six at once on four slots: joins and leaves
        batched = dict(zip(alone, pool.map(ask, alone)))
    assert batched == alone


def test_stop_strings_end_the_text_and_are_not_returned(served):
    c = served.client()
    r = c.completions.create(model=MODEL, prompt="ab", temperature=0, max_tokens=20, stop=["e ", "ü"])
    assert r.choices[0].text == "c€d" and r.choices[0].finish_reason == "stop"
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "ab"}], temperature=0,
                                  max_tokens=4, stop="!")
    assert "!" not in r.choices[0].message.content


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": "ab", "temperature": -0.5}, 400, "temperature"),
    ({"prompt": "ab", "top_p": 0}, 400, "top_p"),
    ({"prompt": "ab", "top_p": 1.5}, 400, "top_p"),
    ({"prompt": "ab", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "ab", "max_tokens": 23}, 400, "max_tokens"),  # context 24, prompt 2
    ({"prompt": "a" * 30}, 400, "prompt"),  # longer than the context
    ({"prompt": [1, 999]}, 400, "prompt"),
    ({"prompt": "ab", "n": 2}, 400, "n"),
    ({"prompt": "ab", "stop": [""]}, 400, "stop"),
    ({"prompt": "ab", "seed": -1}, 400, "seed"),
    ({"prompt": "ab", "model": "gpt-4"}, 404, "model"),
    ({"prompt": "ab", "temperature": "warm"}, 422, "temperature"),
    ({"prompt": {"text": "ab"}}, 422, "prompt"),
    ({"temperature": 0}, 422, "prompt"),
])
def test_bad_completion_inputs_name_the_field(served, body, status, param):
    resp = served.http.post("/v1/completions", json={"model": MODEL, **body})
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]


@pytest.mark.parametrize("body, status, param", [
    ({"messages": []}, 422, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 422, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "x" * 40}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 500}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": -1}, 400, "top_p"),
])
def test_bad_chat_inputs_name_the_field(served, body, status, param):
    resp = served.http.post("/v1/chat/completions", json={"model": MODEL, **body})
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["param"] == param


def test_chat_drops_the_oldest_turns_to_fit_the_context(served):
    messages = [{"role": "user", "content": "abcdefgh"}, {"role": "assistant", "content": "ijk"},
                {"role": "user", "content": "ab"}]
    r = served.client().chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=4)
    assert r.usage.prompt_tokens == len("User: ab\nAssistant:") and r.usage.completion_tokens <= 4


def test_malformed_json_and_unknown_routes(served):
    resp = served.http.post("/v1/completions", content=b'{"model": "x", "prompt": ', headers={
        "content-type": "application/json"})
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]["message"]
    resp = served.http.get("/v1/nothing")
    assert resp.status_code == 404 and "POST /v1/completions" in resp.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        served.client().completions.create(model="other", prompt="a")
    with pytest.raises(openai.BadRequestError):
        served.client().completions.create(model=MODEL, prompt="a", temperature=-1)


# ----------------------------------------------------------------------------- keys and addresses

def test_api_key_is_required_when_given_and_for_other_addresses(tmp):
    run = tmp / "pattern" / MODEL
    if not run.exists():  # run alone (-k): the `served` fixture did not write it
        run = write_run(tmp / "pattern")
    s = Served(run, tmp, "--api-key", "sesame")
    try:
        assert s.http.post("/v1/completions", json={"model": MODEL, "prompt": "a"}).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").completions.create(model=MODEL, prompt="a", max_tokens=2)
        r = s.client("sesame").completions.create(model=MODEL, prompt="ab", temperature=0, max_tokens=4)
        assert r.choices[0].text == "c€"
        assert s.http.get("/health").status_code == 200  # liveness stays open
    finally:
        s.close()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "lab", "serve", str(run), "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "--api-key" in proc.stderr and "Traceback" not in proc.stderr
    for port in ("65536", "-1"):
        proc = subprocess.run([sys.executable, "-m", "lab", "serve", str(run), "--port", port],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 2 and f"--port must be a TCP port from 0 to 65535" in proc.stderr, proc.stderr
        assert port in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- load, disconnects, shutdown

def test_overload_answers_429_and_a_disconnect_frees_the_slot(slow):
    body = {"model": MODEL, "prompt": "a", "max_tokens": 1000, "temperature": 1.0, "seed": 0, "stream": True}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with slow.http.stream("POST", "/v1/completions", json=body) as first:
            lines = first.iter_lines()
            assert next(lines).startswith("data: ")  # decoding: the only slot is taken
            # greedy: a sampled end-of-text (1 in 257 on this random model) would end it after one token
            queued = pool.submit(slow.http.post, "/v1/completions",
                                 json={"model": MODEL, "prompt": "b", "max_tokens": 2, "temperature": 0})
            deadline = time.monotonic() + 30
            while slow.health()["queued"] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            over = slow.http.post("/v1/completions", json={"model": MODEL, "prompt": "c", "max_tokens": 2})
            assert over.status_code == 429 and over.headers["retry-after"] == "1"
            assert over.json()["error"]["type"] == "rate_limit_error"
            closed = time.monotonic()
        # leaving the `with` closed the connection mid-stream: the queued request gets the slot at once
        done = queued.result(timeout=30)
        waited = time.monotonic() - closed
    assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 2
    h = slow.health()
    assert h["active"] == 0 and h["queued"] == 0 and h["rejected"] >= 1
    assert h["steps"] < 900, f"the disconnected request ran on ({h['steps']} steps, {waited:.1f}s)"


def test_the_server_leaves_its_status_in_the_run_folder_for_the_console(served):
    from lab.views.serving import read_serving

    served.client().completions.create(model=MODEL, prompt="ab", max_tokens=8, temperature=0)
    deadline = time.time() + 10
    while time.time() < deadline:
        live = read_serving(served.run)
        if live and live[0].tokens >= 8 and live[0].requests >= 1:
            break
        time.sleep(0.2)
    [s] = live
    assert s.url == served.url and s.slots == 4 and s.state == "serving" and s.tokens >= 8
    listed = subprocess.run([sys.executable, "-m", "lab", "runs", "--runs-dir", str(served.run.parent)],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert f"{served.run.name}: serving {served.url} (" in listed.stdout, listed.stdout + listed.stderr


def test_sigterm_lets_requests_in_flight_finish_then_exits(slow):
    body = {"model": MODEL, "prompt": "a", "max_tokens": 200, "temperature": 0.8, "seed": 3, "stream": True}
    with slow.http.stream("POST", "/v1/completions", json=body) as resp:
        lines = resp.iter_lines()
        first = next(lines)
        slow.proc.send_signal(signal.SIGTERM)
        data = [first[6:]] + _sse(lines)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")  # 200 tokens or <|endoftext|>
    assert len(chunks) > 10 and all(ch["choices"][0]["finish_reason"] is None for ch in chunks[:-1])
    assert slow.proc.wait(60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(slow.url + "/health", timeout=5)
    from lab.views.serving import read_serving

    assert read_serving(slow.run) == [] and read_serving(slow.run, live_only=False)[0].state == "stopped"
