"""`redline export` against a real gunicorn and worker: every labeled output once, in order, as JSON Lines."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from service import api_client, labels_client
from service.auth import create_key
from service.processes import free_port

from .procs import ROOT, api_and_worker, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(redis_url: str, synthetic_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("export")
    keys = tmp / "keys"
    writer = create_key(keys, "team-a", ["outputs:write", "labels:write"])
    (tmp / "writer.key").write_text(writer + "\n")
    (tmp / "reader.key").write_text(create_key(keys, "team-a", ["read"]) + "\n")
    with api_and_worker(redis_url, synthetic_models, tmp, "export" + uuid.uuid4().hex[:8],
                        api_keys_file=keys) as base:
        auth = {"Authorization": f"Bearer {writer}"}
        ids = [f"exp-{n:02d}" for n in range(23)]
        for n, i in enumerate(ids):  # one request each, so created_at orders them as sent
            body = {"outputs": [{"id": i, "model": "bot", "response": "bleeding" if n % 2 else "a calm day",
                                 "prompt": f"turn {n}", "detectors": ["injury"], "labels": {"injury": n % 2}}]}
            assert requests.post(f"{base}/v1/outputs", json=body, headers=auth, timeout=30).status_code == 202
        read = {"Authorization": f"Bearer {(tmp / 'reader.key').read_text().strip()}"}

        def all_scored() -> bool:
            got = requests.get(f"{base}/v1/outputs", params={"id": ids}, headers=read, timeout=30).json()
            return all(o["status"] == "scored" for o in got["outputs"]) and len(got["outputs"]) == len(ids)

        wait_for(all_scored, timeout=60)
        yield {"base": base, "ids": ids, "key_file": tmp / "reader.key", "read": read, "tmp": tmp,
               "write": auth, "writer_key_file": tmp / "writer.key"}


def _export(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", "export", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_export_writes_every_labeled_output_once_in_order(served: dict) -> None:
    out = served["tmp"] / "labeled.jsonl"
    run = _export("--url", served["base"], "--key-file", served["key_file"], "--model", "bot",
                  "--detector", "injury", "--limit", 5, "-o", out)  # 5 pages
    assert run.returncode == 0, run.stderr
    assert "23 labeled outputs of bot / injury (version synthetic-1) to " in run.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == served["ids"]
    assert [r["label"] for r in rows] == [n % 2 for n in range(23)]
    assert [r["prompt"] for r in rows] == [f"turn {n}" for n in range(23)]
    page = requests.get(f"{served['base']}/v1/labels", params={"model": "bot", "detector": "injury", "limit": 50},
                        headers=served["read"], timeout=30).json()
    assert rows == page["outputs"] and page["next"] is None  # the API's own items, as they are
    to_stdout = _export("--url", served["base"], "--key-file", served["key_file"], "--model", "bot",
                        "--detector", "injury")
    assert to_stdout.returncode == 0 and to_stdout.stdout == out.read_text()
    evaluated = subprocess.run([sys.executable, "-m", "service.cli", "evaluate", str(out), "--n", "1"], cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert (report["positives"], report["negatives"]) == (11, 12)
    from models import splits  # and what the training pipeline's --labeled reads

    examples = splits.load_labeled([out], [])
    assert [(e.prompt, e.response, e.label) for e in examples] == \
        [(r["prompt"], r["response"], r["label"]) for r in rows]


def test_a_failed_export_says_why_and_leaves_no_partial_file(served: dict) -> None:
    kept = served["tmp"] / "kept.jsonl"
    kept.write_text("an earlier export\n")
    for args, fragment in [((), "401 from"), (("--key-file", served["key_file"], "--detector", "nope"),
                                               "404 from"),
                           (("--key-file", served["key_file"], "--window", "soon"), "422 from")]:
        base = ["--url", served["base"], "--model", "bot", "--detector", "injury"]
        run = _export(*base, *args, "-o", kept)
        assert run.returncode == 1 and fragment in run.stderr, (args, run.stderr)
        assert kept.read_text() == "an earlier export\n"
    assert "no detector 'nope'" in _export("--url", served["base"], "--key-file", served["key_file"], "--model",
                                           "bot", "--detector", "nope").stderr
    nobody = _export("--url", f"http://127.0.0.1:{free_port()}", "--model", "bot", "--detector", "injury",
                     "-o", served["tmp"] / "never.jsonl")
    assert nobody.returncode == 1 and "cannot reach" in nobody.stderr
    assert list(served["tmp"].glob("*never*")) == []  # nor its partial file


def test_export_waits_out_a_503_as_the_api_asks() -> None:
    # Redis restarting: the API answers 503 with Retry-After. A stand-in API answers so twice.
    answers = [503, 503, 200]
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.path)
            status = answers.pop(0)
            body = (b'{"error": {"code": "unavailable", "message": "Redis is unavailable"}}' if status == 503 else
                    b'{"version": "v", "outputs": [{"id": "a", "label": 1, "score": 0.9}], "next": null}')
            self.send_response(status)
            if status == 503:
                self.send_header("Retry-After", "2")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    waits: list[float] = []
    try:
        got = list(labels_client.pages(f"http://127.0.0.1:{server.server_port}", "bot", "injury",
                                       sleep=waits.append))
    finally:
        server.shutdown()
    assert waits == [2.0, 2.0] and len(seen) == 3
    assert [o["id"] for page in got for o in page["outputs"]] == ["a"]
    answers[:] = [503] * (api_client.RETRIES + 1)  # a Redis that stays away: give up, saying so
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(api_client.ApiError, match="503 from .*: Redis is unavailable"):
            list(labels_client.pages(f"http://127.0.0.1:{server.server_port}", "bot", "injury", sleep=waits.append))
    finally:
        server.shutdown()


def _import(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", "import", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_import_sends_a_files_labels_and_says_which_lines_were_refused(served: dict) -> None:
    # Labels made elsewhere come back through POST /v1/labels; export's own lines (one detector, more
    # fields) come back as they are, with --detector.
    base, tmp = served["base"], served["tmp"]
    ids = [f"imp-{n}" for n in range(5)]
    body = {"outputs": [{"id": i, "model": "imp", "response": "a calm day", "detectors": ["injury"]} for i in ids]}
    assert requests.post(f"{base}/v1/outputs", json=body, headers=served["write"], timeout=30).status_code == 202
    labels = tmp / "labels.jsonl"
    labels.write_text("".join(json.dumps({"id": i, "label": n % 2, "score": 0.5, "prompt": "p"}) + "\n"
                              for n, i in enumerate(ids)) + "\n")
    common = ("--url", base, "--key-file", served["writer_key_file"], "--chunk", 2)
    run = _import(labels, "--detector", "injury", *common)  # three requests
    assert run.returncode == 0 and "5 labels from" in run.stderr and "5 new, 0 changed, 0 unchanged" in run.stderr, \
        run.stderr
    got = requests.get(f"{base}/v1/labels", params={"model": "imp", "detector": "injury"}, headers=served["read"],
                       timeout=30).json()["outputs"]
    assert {o["id"]: o["label"] for o in got} == {i: n % 2 for n, i in enumerate(ids)}
    labels.write_text("".join(json.dumps({"id": i, "detector": "injury", "label": 1}) + "\n" for i in ids))
    again = _import(labels, *common)
    assert "0 new, 3 changed, 2 unchanged" in again.stderr, again.stderr
    # An unknown id in the second request: that request is refused whole, the first was applied.
    labels.write_text("".join(json.dumps({"id": i, "detector": "injury", "label": 0}) + "\n"
                              for i in [ids[0], ids[1], ids[2], "imp-nobody"]))
    refused = _import(labels, *common)
    assert refused.returncode == 1 and "lines 3-4 were refused" in refused.stderr and "404 from" in refused.stderr
    assert "the 2 labels before them were" in refused.stderr, refused.stderr
    got = requests.get(f"{base}/v1/labels", params={"model": "imp", "detector": "injury"}, headers=served["read"],
                       timeout=30).json()["outputs"]
    assert [o["label"] for o in sorted(got, key=lambda o: o["id"])] == [0, 0, 1, 1, 1]
    # A line that is no label stops it before anything is sent.
    labels.write_text(json.dumps({"id": ids[3], "detector": "injury", "label": 0}) + "\nnot json\n")
    bad = _import(labels, *common)
    assert bad.returncode == 2 and "line 2: not JSON" in bad.stderr
    labels.write_text(json.dumps({"id": ids[3], "label": 0}) + "\n")
    assert 'line 1: no "detector"' in _import(labels, *common).stderr
    got = requests.get(f"{base}/v1/labels", params={"model": "imp", "detector": "injury"}, headers=served["read"],
                       timeout=30).json()["outputs"]
    assert {o["id"]: o["label"] for o in got}[ids[3]] == 1  # neither sent
    reader = _import(labels, "--detector", "injury", "--url", base, "--key-file", served["key_file"])
    assert reader.returncode == 1 and "403 from" in reader.stderr
