"""What a caller hands the decode engine and gets back: a :class:`Request` and its events.

A request is token ids in, token ids out, under its own :class:`SamplingParams`
(seed included); the engine (:mod:`lm.decode.engine`) calls :meth:`Request.accept`
for each token and :meth:`Request.finish` once. Subclasses stream elsewhere
(:class:`lm.decode.text.TextRequest` turns tokens into text).
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
from collections.abc import Sequence

from lm.decode.sampling import SamplingParams

# Seeds are kept to 62 bits: they live in an int64 row of the engine's state, hashed with the draw index.
SEED_BITS = 62


@dataclasses.dataclass(frozen=True)
class Decoded:
    """One generated token and its probability under the model (temperature 1, no cut)."""

    token_id: int
    prob: float


@dataclasses.dataclass(frozen=True)
class Notice:
    """Something the user should know about, between tokens: ``overflow`` or ``notice``."""

    kind: str
    message: str


def random_seed() -> int:
    return secrets.randbits(SEED_BITS)


class Request:
    """One sequence to decode: ``ids`` (the text so far) continued under ``params``.

    The engine calls :meth:`accept` for each new token (on the thread that runs
    the engine) and :meth:`finish` once; override them to stream elsewhere. By
    default the events (:class:`Decoded`, :class:`Notice`) collect in ``events``.
    ``allow_overflow``: when the text outgrows the context, drop its oldest
    tokens (keeping ``OVERFLOW_KEEP`` of the context) and go on; otherwise stop
    with finish reason ``length``.
    """

    def __init__(self, ids: Sequence[int], params: SamplingParams, *, allow_overflow: bool = True):
        self.params = params.validate()
        self.history = [int(i) for i in ids]
        self.seed = (params.seed if params.seed is not None else random_seed()) % (1 << SEED_BITS)
        self.produced = 0
        self.allow_overflow = allow_overflow
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.cancelled = False
        self.events: collections.deque = collections.deque()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def accept(self, token: int, prob: float) -> bool:
        """A new token; return False when the request wants no more (it then calls :meth:`finish`)."""
        self.history.append(token)
        self.produced += 1
        self.events.append(Decoded(token, prob))
        if self.produced >= self.params.max_new_tokens:
            self.finish("length")
        return not self.done

    def notice(self, notice: Notice) -> None:
        self.events.append(notice)

    def finish(self, reason: str) -> None:
        """Mark the request finished (``length``, ``cancelled``, or the caller's reason); idempotent."""
        if self.finish_reason is None:
            self.finish_reason = reason

    def cancel(self) -> None:
        """Stop at the next step boundary and free the slot (any thread)."""
        self.cancelled = True
