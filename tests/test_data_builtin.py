"""The built-in corpus: English prose from the standard library, extracted deterministically."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from lm.data import builtin
from lm.data.builtin import SEPARATOR, extract_corpus, is_prose, prose_paragraphs

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text", [
    "Return the absolute value of the argument.",
    "If the process runs longer than timeout seconds, kill the process and raise an error.",
    "Marks a set of nodes returned by \"get_ready\" as processed.",
])
def test_is_prose_accepts_sentences(text):
    assert is_prose(text)


@pytest.mark.parametrize("text", [
    "x = foo(bar[1], {'a': b}) + baz(qux)  # compute",
    ">>> print(sorted(d.items()))  and the result of it is",
    "==================  ============================================= Function Description",
    "pvariance pstdev median_grouped mode multimode quantiles NormalDist",
    "Это предложение на русском языке, а не на английском.",
    "Too short.",
])
def test_is_prose_rejects_code_tables_and_other_text(text):
    assert not is_prose(text)


def test_prose_paragraphs_reflows_and_filters():
    doc = ("Return the value of the thing,\n    wrapped over two lines.\n\n    x = f(y)[0]\n\n"
           "Another line here for the test.")
    assert prose_paragraphs(doc) == ["Return the value of the thing, wrapped over two lines.",
                                     "Another line here for the test."]


def _fake_stdlib(root: Path) -> Path:
    """A tiny standard library with every kind of unit the extractor visits."""
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text(textwrap.dedent('''\
        """The module docstring says what this module is for.

        >>> import pkg.mod
        """
        # This comment explains why the constant has the value it has.
        # It continues on a second line of the same block.
        X = 1
        TEXT = """
        # This line is inside a string and is not a comment at all, so skip it.
        """


        class Thing:
            """A thing that holds a value and can return it later."""

            def get(self):
                """Return the value that was stored in the thing."""
                return X
        '''))
    (root / "a_first.py").write_text('"""This module comes first because its name sorts first."""\n')
    (root / "broken.py").write_text('"""A docstring in a file with a syntax error is never seen."""\ndef (:\n')
    (root / "dup.py").write_text('"""Return the value that was stored in the thing."""\n')
    (root / "notes.txt").write_text("Plain text notes are read as paragraphs of prose too.\n\nx=1\n")
    (root / "pydoc_data").mkdir()
    (root / "pydoc_data" / "topics.py").write_text(
        "topics = {'a': 'The first topic explains how the language works.\\n',\n"
        "          'b': 'The second topic is about something else entirely.\\n'}\n")
    (root / "site-packages").mkdir()
    (root / "site-packages" / "third.py").write_text('"""Third-party code is not part of the corpus at all."""\n')
    (root / "ensurepip" / "_bundled").mkdir(parents=True)
    with zipfile.ZipFile(root / "ensurepip" / "_bundled" / "tool-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("tool/core.py", '"""The bundled tool is parsed from inside its wheel file."""\n')
        zf.writestr("tool/data.json", "{}")
    return root


def test_extract_fake_stdlib_matches_hand_built_expectation(tmp_path):
    root = _fake_stdlib(tmp_path / "lib")
    text, stats = extract_corpus(root)
    # Units in sorted order; broken.py does not parse, site-packages is skipped, and dup.py (sorted
    # before pkg/) claims the paragraph that pkg/mod.py repeats, so mod.py's copy is dropped.
    expected_docs = [
        "This module comes first because its name sorts first.\n",  # a_first.py
        "Return the value that was stored in the thing.\n",  # dup.py
        "The bundled tool is parsed from inside its wheel file.\n",  # ensurepip/_bundled/tool...whl/tool/core.py
        "Plain text notes are read as paragraphs of prose too.\n",  # notes.txt
        "The module docstring says what this module is for.\n\n"  # pkg/mod.py, in source order
        "This comment explains why the constant has the value it has. It continues on a second line of the "
        "same block.\n\nA thing that holds a value and can return it later.\n",
        "The first topic explains how the language works.\n",  # pydoc_data/topics.py: one per topic
        "The second topic is about something else entirely.\n",
    ]
    assert text == SEPARATOR.join(expected_docs)
    assert stats["documents"] == len(expected_docs)


def test_extractor_never_imports_the_modules_it_reads():
    before = set(sys.modules)
    text, _ = extract_corpus(include=lambda rel: rel in ("this.py", "antigravity.py", "json/__init__.py"))
    assert "JSON" in text  # json's docstring was read...
    assert not {"this", "antigravity"} & (set(sys.modules) - before)  # ...and nothing was imported


def test_same_python_gives_byte_identical_text_across_processes(tmp_path):
    """Two interpreters with different hash seeds (set order!) extract the same bytes."""
    script = ("import sys; from lm.data.builtin import extract_corpus; "
              "t, _ = extract_corpus(include=lambda r: r.startswith(('json/', 'email/', 'pydoc_data/', 'ast.py'))); "
              "sys.stdout.buffer.write(t.encode())")
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        outs.append(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True).stdout)
    assert outs[0] == outs[1]
    assert len(outs[0]) > 200_000  # the language reference alone is several hundred KB
    docs = outs[0].decode().split(SEPARATOR)
    paragraphs = [p for d in docs for p in d.strip("\n").split("\n\n")]
    assert len(paragraphs) == len(set(paragraphs))  # deduplicated
    assert all(d.endswith("\n") for d in docs)


def test_corpus_is_cached_per_python_and_extractor_version(tmp_path, monkeypatch):
    root = _fake_stdlib(tmp_path / "lib")
    monkeypatch.setattr(builtin, "stdlib_dir", lambda: root)
    calls = []
    real = builtin.extract_corpus
    monkeypatch.setattr(builtin, "extract_corpus", lambda **kw: calls.append(1) or real(root, **kw))
    path = builtin.builtin_corpus_path(tmp_path / "cache")
    assert path.parent == tmp_path / "cache" / "builtin"
    assert builtin.corpus_key(root) in path.name and f"x{builtin.EXTRACTOR_VERSION}" in path.name
    assert builtin.builtin_corpus_path(tmp_path / "cache") == path
    assert len(calls) == 1  # the second call used the cache
    info = builtin.builtin_corpus_info(tmp_path / "cache")
    assert info["bytes"] == path.stat().st_size and info["documents"] == 7
    monkeypatch.setattr(builtin, "EXTRACTOR_VERSION", builtin.EXTRACTOR_VERSION + 1)
    assert builtin.builtin_corpus_path(tmp_path / "cache") != path  # a new extractor rebuilds


@pytest.mark.slow
def test_full_builtin_corpus_is_several_megabytes_of_english():
    path = builtin.builtin_corpus_path()  # the session's cache: other slow tests reuse the extraction
    data = path.read_bytes()
    text = data.decode("utf-8")
    assert len(data) >= 3_000_000, f"built-in corpus is only {len(data):,} bytes"
    docs = text.split(SEPARATOR)
    assert len(docs) > 500
    words = text.split()
    common = sum(w.lower() in ("the", "of", "to", "and", "a", "is") for w in words)
    assert common / len(words) > 0.08  # English prose: function words are frequent
