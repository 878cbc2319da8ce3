"""Decoding: one engine for ``lab sample``, ``lab chat``, the console's chat tab and ``lab serve``.

* :func:`load` -- a run directory (or checkpoint) to an eval-mode model and its tokenizer;
* :class:`Engine` -- KV-cache slots, one-token steps (Triton on CUDA, else torch),
  CUDA graphs, continuous batching of :class:`Request` objects (:mod:`lm.decode.engine`,
  :mod:`lm.decode.request`);
* :class:`SamplingParams` and the samplers (:mod:`lm.decode.sampling`);
* :class:`Generator`, :class:`TextRequest`, :class:`TextStream` -- text in, streamed text out
  (:mod:`lm.decode.text`).
"""

from lm.decode.engine import OVERFLOW_KEEP, Engine, StepMode, attention_window
from lm.decode.load import (LoadedRun, eos_token_id, load, load_model, load_tokenizer, resolve_device,
                            resolve_dtype, token_byte_table)
from lm.decode.request import Decoded, Notice, Request
from lm.decode.sampling import SamplingParams, nucleus_mask, race, sample, sampling_probs, top_k_threshold
from lm.decode.text import GenerationResult, Generator, Stream, StreamItem, TextRequest, TextStream

__all__ = ["OVERFLOW_KEEP", "Decoded", "Engine", "GenerationResult", "Generator", "LoadedRun", "Notice", "Request",
           "SamplingParams", "StepMode", "Stream", "StreamItem", "TextRequest", "TextStream", "attention_window",
           "eos_token_id", "load", "load_model", "load_tokenizer", "nucleus_mask", "race", "resolve_device",
           "resolve_dtype", "sample", "sampling_probs", "token_byte_table", "top_k_threshold"]
