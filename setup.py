"""Builds lm's optional C extension (the tokenizer's compiled fast path); everything else is in pyproject.toml.

``optional=True``: on a machine without a C compiler the build of the extension
fails quietly and lm installs and encodes with the pure-Python path.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("lm.tokenizer._encode_c", sources=["lm/tokenizer/_encode_c.c"], optional=True)])
