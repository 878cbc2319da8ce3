"""Texts written for the tests (a few KB each, in tests/data), so that what needs a corpus runs everywhere.

``stories.txt``: short children's stories separated by ``<|endoftext|>`` (TinyStories-like, a few
non-ASCII characters); ``verse.txt``: a play's dialogue (TinyShakespeare-like). Both were written for
this project; neither is copied from a corpus.
"""

from pathlib import Path

PROJECT_DATA = Path(__file__).resolve().parent / "data"
PROJECT_TEXTS = {"stories": PROJECT_DATA / "stories.txt", "verse": PROJECT_DATA / "verse.txt"}
