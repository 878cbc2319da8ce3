"""`lab data get` downloads: against a local HTTP server on 127.0.0.1, never the internet."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading

import pytest

from lm.data.download import download_dataset, fetch, read_manifest
from lm.data.registry import DATASETS, Dataset, RemoteFile, dataset_files, get_dataset
from lm.errors import DataError


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    ranges = True
    log: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.log.append((self.path, self.headers.get("Range")))
        body = self.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404, "Not Found")
            return
        rng = self.headers.get("Range")
        if rng and self.ranges:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def server():
    """A local file server: set ``handler.files`` = {name: bytes}; ``handler.ranges`` toggles Range support."""
    handler = type("Handler", (_Handler,), {"files": {}, "ranges": True, "log": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _dataset(body: bytes, *, sha: bool = True, gz: bool = False) -> Dataset:
    remote = "corpus.txt.gz" if gz else "corpus.txt"
    download = gzip.compress(body, mtime=0) if gz else body
    return Dataset("toy", "a toy corpus", "https://example.invalid/never-used", (
        RemoteFile(remote, "corpus.txt", "train", len(download), size=len(download) if sha else None,
                   sha256=hashlib.sha256(download).hexdigest() if sha else None, gzip=gz),))


BODY = ("Once upon a time there was a little corpus.\n" * 5000).encode()


def test_full_download_verifies_and_records_a_manifest(server, tmp_path):
    handler, base = server
    handler.files = {"corpus.txt": BODY}
    out = download_dataset(_dataset(BODY), tmp_path, base_url=base)
    path = out["train"]
    assert path == tmp_path / "toy" / "corpus.txt" and path.read_bytes() == BODY
    entry = read_manifest(tmp_path / "toy")["corpus.txt"]
    assert entry["sha256"] == hashlib.sha256(BODY).hexdigest() and entry["size"] == len(BODY)
    assert not list((tmp_path / "toy").glob("*.part"))
    # Already there: no second request.
    download_dataset(_dataset(BODY), tmp_path, base_url=base)
    assert len(handler.log) == 1


def test_resume_asks_only_for_the_missing_bytes(server, tmp_path):
    handler, base = server
    handler.files = {"corpus.txt": BODY}
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "corpus.txt.part").write_bytes(BODY[:70_000])
    seen = []
    download_dataset(_dataset(BODY), tmp_path, base_url=base, progress=lambda s, d, t: seen.append((s, d, t)))
    assert handler.log == [("/corpus.txt", "bytes=70000-")]
    assert (tmp_path / "toy" / "corpus.txt").read_bytes() == BODY
    downloads = [(d, t) for s, d, t in seen if s.startswith("download")]
    assert downloads[0][0] > 70_000 and downloads[-1] == (len(BODY), len(BODY))


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    handler, base = server
    handler.files, handler.ranges = {"corpus.txt": BODY}, False
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "corpus.txt.part").write_bytes(b"garbage that is not a prefix")
    download_dataset(_dataset(BODY), tmp_path, base_url=base)
    assert (tmp_path / "toy" / "corpus.txt").read_bytes() == BODY


def test_resume_without_known_hash_checks_content_length(server, tmp_path):
    handler, base = server
    handler.files = {"corpus.txt": BODY}
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "corpus.txt.part").write_bytes(BODY[:1234])
    download_dataset(_dataset(BODY, sha=False), tmp_path, base_url=base)
    assert (tmp_path / "toy" / "corpus.txt").read_bytes() == BODY
    assert read_manifest(tmp_path / "toy")["corpus.txt"]["sha256"] == hashlib.sha256(BODY).hexdigest()


def test_corrupt_download_is_detected_by_hash_and_deleted(server, tmp_path):
    handler, base = server
    corrupt = bytearray(BODY)
    corrupt[100] ^= 1
    handler.files = {"corpus.txt": bytes(corrupt)}
    with pytest.raises(DataError, match="corrupt: its sha256 is"):
        download_dataset(_dataset(BODY), tmp_path, base_url=base)
    assert not list((tmp_path / "toy").iterdir())  # neither the file nor a .part is left


def test_gzip_download_is_decompressed(server, tmp_path):
    handler, base = server
    handler.files = {"corpus.txt.gz": gzip.compress(BODY, mtime=0)}
    out = download_dataset(_dataset(BODY, gz=True), tmp_path, base_url=base)
    assert out["train"].read_bytes() == BODY
    assert not (tmp_path / "toy" / "corpus.txt.gz").exists()
    assert read_manifest(tmp_path / "toy")["corpus.txt"]["size"] == len(BODY)


def test_server_down_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=rf"cannot reach http://127.0.0.1:{port}/corpus.txt.*LAB_DATA_BASE_URL"):
        download_dataset(_dataset(BODY), tmp_path, base_url=f"http://127.0.0.1:{port}")


def test_missing_file_on_server_is_an_http_error(server, tmp_path):
    _, base = server
    with pytest.raises(DataError, match="HTTP 404"):
        download_dataset(_dataset(BODY), tmp_path, base_url=base)


def test_truncated_transfer_keeps_the_part_file_for_resuming(server, tmp_path):
    handler, base = server

    class Truncating(handler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[:5000])  # then the connection closes

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        with pytest.raises(DataError, match="run the same command again to resume"):
            fetch(f"http://127.0.0.1:{httpd.server_address[1]}/x", tmp_path / "x.txt")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert (tmp_path / "x.txt.part").read_bytes() == BODY[:5000]


def test_real_tinyshakespeare_entry_via_base_url_override(server, tmp_path, shared_data, monkeypatch):
    handler, base = server
    handler.files = {"input.txt": (shared_data / "tinyshakespeare.txt").read_bytes()}
    monkeypatch.setenv("LAB_DATA_BASE_URL", base)
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path))
    out = download_dataset("tinyshakespeare")
    assert out["train"] == tmp_path / "tinyshakespeare" / "tinyshakespeare.txt"
    assert out["train"].stat().st_size == 1_115_394
    assert dataset_files("tinyshakespeare") == {"train": out["train"]}


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError) as e:
        get_dataset("wikitext")
    for name in DATASETS:
        assert name in str(e.value)


def test_dataset_not_downloaded_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="lab data get tinystories"):
        dataset_files("tinystories")


def test_registry_urls_are_the_published_addresses(monkeypatch):
    monkeypatch.delenv("LAB_DATA_BASE_URL", raising=False)
    urls = {f.remote: d.url(f) for d in DATASETS.values() for f in d.files}
    assert urls["input.txt"] == ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                                 "tinyshakespeare/input.txt")
    assert urls["TinyStoriesV2-GPT4-valid.txt"] == ("https://huggingface.co/datasets/roneneldan/TinyStories/"
                                                    "resolve/main/TinyStoriesV2-GPT4-valid.txt")
    assert urls["owt_train.txt.gz"] == ("https://huggingface.co/datasets/stanford-cs336/owt-sample/resolve/main/"
                                        "owt_train.txt.gz")


def test_cli_get_downloads_with_the_base_url_override(server, tmp_path, monkeypatch, capsys):
    from lab.cli import main

    handler, base = server
    handler.files = {"corpus.txt": BODY}
    monkeypatch.setitem(DATASETS, "toy", _dataset(BODY))
    assert main(["data", "get", "toy", "--dest", str(tmp_path), "--base-url", base]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "toy" / "corpus.txt") in out and "LAB_DATA_DIR" in out
    assert (tmp_path / "toy" / "corpus.txt").read_bytes() == BODY


def test_cli_get_errors_are_one_line_without_traceback(tmp_path, monkeypatch, capsys):
    from lab.cli import main

    assert main(["data", "get", "wikitext"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lab: unknown dataset 'wikitext'") and "Traceback" not in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(DATASETS, "toy", _dataset(BODY))
    assert main(["data", "get", "toy", "--dest", str(tmp_path), "--base-url", f"http://127.0.0.1:{port}"]) == 2
    assert "cannot reach" in capsys.readouterr().err


def _unhashed(body: bytes, approx: int) -> Dataset:
    return Dataset("toy", "a toy corpus", "https://example.invalid/never-used",
                   (RemoteFile("corpus.txt", "corpus.txt", "train", approx),))


@pytest.mark.parametrize("bad, why", [
    (b"<!DOCTYPE html><html><body>Rate limited</body></html>" + b" " * 250_000, "not plain text"),
    (b"tiny", "the server may be serving another file"),
    (bytes(range(256)) * 1000, "not UTF-8"),
])
def test_force_never_replaces_a_good_file_with_a_worse_one(server, tmp_path, bad, why):
    """No hash is published (like TinyStories): size bounds and a text check guard the replacement."""
    handler, base = server
    good = ("Once upon a time there was a little corpus.\n" * 6000).encode()
    handler.files = {"corpus.txt": good}
    path = download_dataset(_unhashed(good, len(good)), tmp_path, base_url=base)["train"]
    handler.files = {"corpus.txt": bad}
    with pytest.raises(DataError, match=why) as e:
        download_dataset(_unhashed(good, len(good)), tmp_path, base_url=base, force=True)
    assert "kept" in str(e.value)
    assert path.read_bytes() == good
    assert not list((tmp_path / "toy").glob("*.part"))
    newer = good.replace(b"little", b"larger")
    handler.files = {"corpus.txt": newer}
    download_dataset(_unhashed(good, len(good)), tmp_path, base_url=base, force=True)
    assert path.read_bytes() == newer
