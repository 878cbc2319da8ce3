"""Helpers for the generation tests: a byte-level tokenizer, a model trained on a
repeated pattern, and run directories written by hand the way the trainer writes them.

The pattern mixes one-byte and multi-byte characters (``€`` is 3 bytes, ``ü``
2) and ends with ``<|endoftext|>``; with a byte-level vocabulary a character's
bytes are separate tokens, which is what the streaming tests need. Every byte
of the pattern is distinct, so the next token is a function of the last one
and a tiny model learns it in a second.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from lm.checkpoint_file import atomic_torch_save
from lm.config import ExperimentConfig, to_dict
from lm.functional import cross_entropy
from lm.model import ModelConfig, TransformerLM
from lm.optim import AdamW

EOS = "<|endoftext|>"
EOS_ID = 256
PATTERN_TEXT = "abc€de ü!"
PATTERN_IDS = list(PATTERN_TEXT.encode("utf-8")) + [EOS_ID]
PATTERN_CFG = ModelConfig(vocab_size=257, context_length=24, d_model=32, num_layers=2, num_heads=4, d_ff=64)


def byte_tokenizer():
    """The real Tokenizer with no merges: ids 0..255 are bytes, 256 is <|endoftext|>."""
    try:
        from lm.tokenizer import Tokenizer
    except ImportError:
        from lm.tokenizer.tokenizer import Tokenizer
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], [EOS])


def pattern_stream(repeats: int) -> list[int]:
    return PATTERN_IDS * repeats


@functools.cache
def _trained_state() -> dict:
    torch.manual_seed(0)
    model = TransformerLM(PATTERN_CFG)
    opt = AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    data = torch.tensor(pattern_stream(40))
    T = PATTERN_CFG.context_length
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        starts = torch.randint(0, len(data) - T - 1, (8,), generator=g).tolist()
        x = torch.stack([data[s:s + T] for s in starts])
        y = torch.stack([data[s + 1:s + 1 + T] for s in starts])
        loss = cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"the pattern model did not learn (loss {loss.item():.3f})"
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pattern_model() -> TransformerLM:
    """A fresh copy of the tiny model trained (once per session) on the repeated pattern."""
    model = TransformerLM(PATTERN_CFG)
    model.load_state_dict(_trained_state())
    return model.eval()


def random_model(cfg: ModelConfig, seed: int = 0, dtype=torch.float32) -> TransformerLM:
    """An untrained model whose RMSNorm gains are random too (all ones would hide a mix-up)."""
    torch.manual_seed(seed)
    model = TransformerLM(cfg, dtype=dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(1.0, 0.3)
    return model


def write_run(root: Path, model: TransformerLM | None = None, tokenizer=None, *, best: bool = True,
              latest: bool = True, iteration: int = 150, with_tokenizer: bool = True) -> Path:
    """A run directory as the trainer writes it: config.toml, tokenizer/, checkpoints/{latest,best}.pt."""
    model = model or pattern_model()
    run = Path(root) / "pattern-20250101-000000"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    exp = to_dict(ExperimentConfig(name="pattern", model=model.cfg))
    (run / "config.toml").write_text(f'name = "pattern"\n[model]\nvocab_size = {model.cfg.vocab_size}\n')
    if with_tokenizer:
        (tokenizer or byte_tokenizer()).save(run / "tokenizer")
    ckpt = {"format": "lm-checkpoint/1", "model": model.state_dict(), "optimizer": {}, "iteration": iteration,
            "config": exp}
    for name, wanted in (("latest.pt", latest), ("best.pt", best)):
        if wanted:
            atomic_torch_save(ckpt, run / "checkpoints" / name)
    return run
