"""The OpenAI-compatible request bodies of ``lab serve``, their checks, and the chat template.

Bodies are pydantic models (FastAPI validates types and answers 422 naming the
field); :func:`completion_job` and :func:`chat_job` check values against the
model (400 naming the field) and turn a body into token ids and
:class:`lm.decode.SamplingParams`. Unknown fields are ignored, as OpenAI's
server ignores fields a model does not use; fields lab cannot honour (``n`` > 1,
``logprobs``) are refused rather than silently dropped.

The chat template (these are base models, trained on plain text, with no
special chat tokens) is plain text, documented in docs/serving.md::

    <system messages, each followed by a blank line>
    User: <content>
    Assistant: <content>
    ...
    Assistant:

The reply is what the model writes after the last ``Assistant:``; it stops at a
line that starts the next ``User:`` turn (``"\\nUser:"`` is a stop string) or
at the end-of-text token. When the conversation does not fit the context with
room for the reply, the oldest non-system messages are dropped (the last
message is always kept).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lm.decode import SamplingParams

ROLES = {"system": None, "user": "User", "assistant": "Assistant"}
CHAT_STOP = "\nUser:"
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class BadRequest(Exception):
    """A request value the server refuses: HTTP ``status`` with an OpenAI-style error naming ``param``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


class CompletionBody(_Body):
    prompt: str | list[str] | list[int]
    echo: bool = False
    logprobs: int | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None


@dataclasses.dataclass
class Job:
    """What a request asks the engine for."""

    ids: list[int]
    params: SamplingParams
    prompt_text: str


def render_chat(messages: list[Message]) -> str:
    """The plain-text chat template (module doc); ends with ``Assistant:`` for the reply."""
    parts = []
    for m in messages:
        parts.append(f"{m.content}\n\n" if m.role == "system" else f"{ROLES[m.role]}: {m.content}\n")
    return "".join(parts) + "Assistant:"


def _check_common(body: _Body, context: int) -> list[str]:
    if body.n != 1:
        raise BadRequest(f"n must be 1 (lab serve returns one choice per request), got {body.n}", "n")
    if body.temperature < 0:
        raise BadRequest(f"temperature must be >= 0 (0 = greedy), got {body.temperature}", "temperature")
    if not 0 < body.top_p <= 1:
        raise BadRequest(f"top_p must be in (0, 1], got {body.top_p}", "top_p")
    if body.top_k < 0:
        raise BadRequest(f"top_k must be >= 0 (0 = no limit), got {body.top_k}", "top_k")
    if body.seed is not None and body.seed < 0:
        raise BadRequest(f"seed must be a non-negative integer, got {body.seed}", "seed")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(not s for s in stop):
        raise BadRequest("stop strings must not be empty", "stop")
    return stop


def _max_tokens(value: int | None, name: str, prompt_tokens: int, context: int, default: int | None) -> int:
    room = context - prompt_tokens
    if value is None:
        return max(1, min(default, room) if default else room)
    if value < 1:
        raise BadRequest(f"{name} must be at least 1, got {value}", name)
    if value > room:
        raise BadRequest(f"{name} is {value} but the prompt has {prompt_tokens} tokens and the model's context "
                         f"holds {context}: at most {room} new tokens fit", name)
    return value


def _params(body: _Body, max_tokens: int, stop: list[str]) -> SamplingParams:
    return SamplingParams(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, max_new_tokens=max_tokens,
                          seed=body.seed, stop=tuple(stop)).validate()


def completion_job(body: CompletionBody, tokenizer, vocab_size: int, context: int, eos_id: int | None) -> Job:
    """Token ids and sampling parameters of a /v1/completions body (BadRequest naming the field)."""
    stop = _check_common(body, context)
    if body.logprobs is not None:
        raise BadRequest("logprobs are not supported by lab serve; leave the field out", "logprobs")
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise BadRequest(f"prompt: one prompt per request (got a list of {len(prompt)})", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids, text = tokenizer.encode(prompt), prompt
    else:
        ids = [int(i) for i in prompt]
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise BadRequest(f"prompt token ids {bad[:5]} are outside the vocabulary (0..{vocab_size - 1})", "prompt")
        text = None
    if not ids:
        if eos_id is None:
            raise BadRequest("prompt is empty and this tokenizer has no end-of-text token to start from", "prompt")
        ids = [eos_id]  # an empty prompt starts a fresh document
    if len(ids) >= context:
        raise BadRequest(f"prompt has {len(ids)} tokens but the model's context holds {context}, with room for "
                         "at least one new token; shorten it", "prompt")
    max_tokens = _max_tokens(body.max_tokens, "max_tokens", len(ids), context, COMPLETION_MAX_TOKENS)
    if text is None:
        text = tokenizer.decode(ids)
    return Job(ids, _params(body, max_tokens, stop), text)


def chat_job(body: ChatBody, tokenizer, vocab_size: int, context: int, eos_id: int | None) -> Job:
    """The rendered conversation (oldest turns dropped to fit) and its sampling parameters."""
    stop = _check_common(body, context)
    if body.logprobs:
        raise BadRequest("logprobs are not supported by lab serve; leave the field out", "logprobs")
    name = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    wanted = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if wanted is not None and wanted < 1:
        raise BadRequest(f"{name} must be at least 1, got {wanted}", name)
    messages = list(body.messages)
    need = wanted or 1
    shortest = tokenizer.encode(render_chat([m for m in messages[:-1] if m.role == "system"] + messages[-1:]))
    if len(shortest) < context and len(shortest) + need > context:
        raise BadRequest(f"{name} is {need} but even the shortest form of the conversation (the system messages "
                         f"and the last message) has {len(shortest)} tokens, and the model's context holds "
                         f"{context}: at most {context - len(shortest)} new tokens fit", name)
    while True:
        text = render_chat(messages)
        ids = tokenizer.encode(text)
        if len(ids) + need <= context:
            break
        droppable = [i for i, m in enumerate(messages[:-1]) if m.role != "system"]
        if not droppable:
            raise BadRequest(f"messages: the conversation needs {len(ids)} tokens even with only the system "
                             f"messages and the last message kept, and {need} new token(s) must fit in the "
                             f"model's context of {context}", "messages")
        del messages[droppable[0]]
    max_tokens = _max_tokens(wanted, name, len(ids), context, None)
    return Job(ids, _params(body, max_tokens, [*stop, CHAT_STOP]), text)
