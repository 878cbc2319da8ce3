"""The `lab serve` processes of a run, as the console shows them (read from ``<run>/serving/*.json``).

Textual-free: :func:`read_serving` returns :class:`Serving` records, dropping
files that are not what :mod:`lab.serve.status` writes and marking servers whose
process is gone (killed without writing "stopped") as such; :func:`serving_line`
is the monitor's one line per live server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text

from lab.serve.status import SERVING_DIR
from lab.views.formats import format_number
from lm.processes import ALIVE, OTHER_HOST, process_state

_NUMBERS = ("slots", "active", "queued", "requests", "rejected", "tokens", "requests_per_s", "tokens_per_s",
            "updated")


@dataclass(frozen=True)
class Serving:
    url: str
    model: str
    state: str
    """'serving', 'stopped', or 'gone' (the process died without saying so)."""
    slots: int
    active: int
    queued: int
    requests: int
    rejected: int
    tokens: int
    requests_per_s: float
    tokens_per_s: float
    updated: float


def _parse(raw: dict) -> Serving | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("url"), str) or not isinstance(raw.get("state"), str):
        return None
    nums = {k: raw.get(k) for k in _NUMBERS}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in nums.values()):
        return None
    state = raw["state"]
    if state == "serving" and process_state(raw.get("pid"), raw.get("host"), raw.get("pid_start")) not in (
            ALIVE, OTHER_HOST):
        state = "gone"
    return Serving(url=raw["url"], model=str(raw.get("model", "")), state=state,
                   slots=int(nums["slots"]), active=int(nums["active"]), queued=int(nums["queued"]),
                   requests=int(nums["requests"]), rejected=int(nums["rejected"]), tokens=int(nums["tokens"]),
                   requests_per_s=float(nums["requests_per_s"]), tokens_per_s=float(nums["tokens_per_s"]),
                   updated=float(nums["updated"]))


def read_serving(run_dir: str | Path, live_only: bool = True) -> list[Serving]:
    """The servers of ``run_dir`` (only those still serving unless ``live_only`` is False), newest first."""
    out = []
    for path in sorted((Path(run_dir) / SERVING_DIR).glob("*.json")):
        try:
            s = _parse(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ValueError):
            continue  # being replaced, or not ours: the next poll reads it again
        if s is not None and (s.state == "serving" or not live_only):
            out.append(s)
    return sorted(out, key=lambda s: -s.updated)


def serving_line(servers: list[Serving]) -> Text:
    """"serving http://... · 3/8 slots · 2 queued · 1.5 req/s · 420 tok/s · 120 requests (2 refused)"."""
    out = Text()
    for i, s in enumerate(servers):
        if i:
            out.append("\n")
        out.append("serving ", style="bold green")
        out.append(s.url, style="underline")
        out.append(f"  {s.active}/{s.slots} slots  {s.queued} queued  ")
        out.append(f"{format_number(s.requests_per_s, '.2g')} req/s  {format_number(s.tokens_per_s, ',.0f')} tok/s  ")
        out.append(f"{s.requests:,} requests" + (f" ({s.rejected:,} refused)" if s.rejected else ""), style="dim")
    return out
