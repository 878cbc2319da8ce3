"""Byte-level BPE tokenizer: training, encoding, GPT-2-format files and token files.

Public API (what the data pipeline, the engine and the CS336 adapters use):

* :func:`train_bpe` (CS336 signature) and :func:`train_bpe_detailed`;
* :class:`Tokenizer` (``from_files``, ``from_dir``, ``save``, ``encode``,
  ``encode_iterable``, ``decode``, ``encode_file``, ``fingerprint``,
  ``vocab_size``) and :func:`get_tokenizer` (CS336 adapter);
* :func:`load_token_file` and :class:`TokenFileInfo` for encoded corpora.
"""

from __future__ import annotations

from lm.tokenizer.pretokenize import GPT2_PATTERN
from lm.tokenizer.token_file import TokenFileInfo, encode_file, load_token_file, read_token_file_info, token_dtype
from lm.tokenizer.tokenizer import Tokenizer, get_tokenizer
from lm.tokenizer.train import BpeTrainingResult, train_bpe, train_bpe_detailed

__all__ = [
    "GPT2_PATTERN",
    "BpeTrainingResult",
    "TokenFileInfo",
    "Tokenizer",
    "encode_file",
    "get_tokenizer",
    "load_token_file",
    "read_token_file_info",
    "token_dtype",
    "train_bpe",
    "train_bpe_detailed",
]
