"""The FastAPI application of ``lab serve``: OpenAI-compatible endpoints over one decode engine.

One :class:`lm.decode.Engine` (``max_batch`` KV-cache slots) runs on its own
thread; each HTTP request becomes a :class:`lm.decode.TextRequest` submitted to
it and is answered as its text arrives (Server-Sent Events when ``stream``).
Requests beyond the free slots wait in the engine's queue; when ``max_queue``
requests already wait, the answer is 429 with ``Retry-After``. A streaming
client that disconnects cancels its request, which frees its slot at the next
step boundary. Every error is OpenAI-shaped JSON
(``{"error": {"message", "type", "param", "code"}}``) naming the field.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lab.serve.protocol import BadRequest, ChatBody, CompletionBody, Job, chat_job, completion_job
from lm.decode import Engine, TextRequest, eos_token_id, token_byte_table
from lm.errors import LabError

FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop", "error": "stop"}
RETRY_AFTER_S = 1


def error_body(message: str, param: str | None = None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(status: int, message: str, param: str | None = None, code: str | None = None, headers=None,
           kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(error_body(message, param, code, kind), status_code=status, headers=headers)


class Server:
    """The engine, its thread, and what the endpoints need to know about the model."""

    def __init__(self, engine: Engine, tokenizer, model_id: str, *, max_queue: int, api_key: str | None = None,
                 created: int | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.max_queue = max_queue
        self.api_key = api_key
        self.created = created or int(time.time())
        cfg = engine.cfg
        self.context, self.vocab_size = cfg.context_length, cfg.vocab_size
        self.token_bytes = token_byte_table(tokenizer, cfg.vocab_size)
        self.eos_id = eos_token_id(tokenizer)
        self.thread: threading.Thread | None = None
        self.requests_total = 0
        self.rejected_total = 0

    def start(self) -> None:
        self.thread = threading.Thread(target=self.engine.serve_forever, name="lab-serve-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.engine.stop()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def submit(self, job: Job, loop: asyncio.AbstractEventLoop) -> tuple[TextRequest, asyncio.Event]:
        e = self.engine
        if e.pending() - (e.max_batch - e.active) >= self.max_queue:  # beyond the free slots, the queue is full
            self.rejected_total += 1
            raise BadRequest(f"the server is busy: {self.engine.active} requests are decoding and "
                             f"{self.engine.pending()} wait (the queue holds {self.max_queue}); retry shortly",
                             None, 429, "rate_limit_exceeded")
        wake = asyncio.Event()
        r = TextRequest(job.ids, job.params, self.token_bytes, self.eos_id, allow_overflow=False,
                        on_event=lambda: loop.call_soon_threadsafe(wake.set))
        self.requests_total += 1
        self.engine.submit(r)
        return r, wake


async def _items(r: TextRequest, wake: asyncio.Event) -> AsyncIterator:
    """The request's stream items as they arrive; cancels it if the consumer goes away."""
    try:
        while True:
            while r.events:
                item = r.events.popleft()
                yield item
                if item.finished or item.event == "error":
                    return
            if r.error is not None:
                return
            await wake.wait()
            wake.clear()
    finally:
        if not r.done:
            r.cancel()


def _raise_engine_error(r: TextRequest) -> None:
    if r.error is not None:
        raise BadRequest(r.error, None, 500, "engine_error")


def _usage(r: TextRequest) -> dict:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": len(r.new_ids),
            "total_tokens": r.prompt_tokens + len(r.new_ids)}


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="lab serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return _error(400, f"the request body is not valid JSON ({first.get('msg', 'parse error')}); send a "
                               "JSON object", None, "invalid_json")
        loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _union_tag(p)]
        param = ".".join(loc) or None
        msgs = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body' and not _union_tag(p)) or 'body'}"
                         f": {e.get('msg')}" for e in errors[:5])
        return _error(422, f"invalid request: {msgs}", param, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = (f"no route {request.method} {request.url.path}; lab serve has POST /v1/completions, "
                   "POST /v1/chat/completions, GET /v1/models and GET /health") if exc.status_code in (404, 405) \
            else str(exc.detail)
        return _error(exc.status_code, message, None, "not_found" if exc.status_code == 404 else None)

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest):
        headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 429 else None
        kind = "rate_limit_error" if exc.status == 429 else "invalid_request_error"
        return _error(exc.status, exc.message, exc.param, exc.code, headers, kind)

    @app.exception_handler(LabError)
    async def _lab(request: Request, exc: LabError):
        return _error(400, str(exc))

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if server.api_key and request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or token.strip() != server.api_key:
                return _error(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' with "
                                   "the key given to lab serve --api-key", None, "invalid_api_key",
                              kind="authentication_error")
        return await call_next(request)

    def _check_model(name: str) -> None:
        if name != server.model_id:
            raise BadRequest(f"model {name!r} is not served here; this server has {server.model_id!r} "
                             "(GET /v1/models)", "model", 404, "model_not_found")

    @app.get("/health")
    async def health():
        e = server.engine
        return {"status": "ok", "model": server.model_id, "slots": e.max_batch, "active": e.active,
                "queued": e.pending(), "max_queue": server.max_queue, "requests": server.requests_total,
                "rejected": server.rejected_total, "steps": e.steps, "step": e.step_kind,
                "memory_allocated": _memory(e.device)}

    def _model_card() -> dict:
        return {"id": server.model_id, "object": "model", "created": server.created, "owned_by": "lab",
                "context_length": server.context}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        _check_model(model_id)
        return _model_card()

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        _check_model(body.model)
        job = completion_job(body, server.tokenizer, server.vocab_size, server.context, server.eos_id)
        r, wake = server.submit(job, asyncio.get_running_loop())
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = job.prompt_text if body.echo else ""

        def chunk(text: str, finish: str | None) -> dict:
            return {"id": cid, "object": "text_completion", "created": created, "model": server.model_id,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        if body.stream:
            async def events():
                if head:
                    yield _sse(chunk(head, None))
                async for item in _items(r, wake):
                    if item.finished:
                        yield _sse(chunk(item.text, FINISH[item.event]))
                    elif item.text:
                        yield _sse(chunk(item.text, None))
                if body.stream_options and body.stream_options.include_usage:
                    yield _sse({"id": cid, "object": "text_completion", "created": created, "model": server.model_id,
                                "choices": [], "usage": _usage(r)})
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        async for _ in _items(r, wake):
            pass
        _raise_engine_error(r)
        out = chunk(head + r.output, FINISH.get(r.finish_reason, "stop"))
        out["usage"] = _usage(r)
        return out

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody):
        _check_model(body.model)
        job = chat_job(body, server.tokenizer, server.vocab_size, server.context, server.eos_id)
        r, wake = server.submit(job, asyncio.get_running_loop())
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(delta: dict, finish: str | None) -> dict:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": server.model_id,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        if body.stream:
            async def events():
                yield _sse(chunk({"role": "assistant", "content": ""}, None))
                async for item in _items(r, wake):
                    if item.finished:
                        yield _sse(chunk({"content": item.text} if item.text else {}, FINISH[item.event]))
                    elif item.text:
                        yield _sse(chunk({"content": item.text}, None))
                if body.stream_options and body.stream_options.include_usage:
                    yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                                "model": server.model_id, "choices": [], "usage": _usage(r)})
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        async for _ in _items(r, wake):
            pass
        _raise_engine_error(r)
        return {"id": cid, "object": "chat.completion", "created": created, "model": server.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": r.output}, "logprobs": None,
                             "finish_reason": FINISH.get(r.finish_reason, "stop")}],
                "usage": _usage(r)}

    return app


def _memory(device) -> int | None:
    """Bytes the caching allocator holds for tensors on a CUDA device (None elsewhere): a leak shows here."""
    import torch

    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def _union_tag(part) -> bool:
    """pydantic names the member of a union it tried in the error location ('str', 'list[int]'): not a field."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part or "-" in part)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
