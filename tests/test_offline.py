"""`redline evaluate` on files, run as the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from service import evaluation as ev
from service.intervals import clopper_pearson_interval, wilson_interval

SCORES = [0.9, 0.8, 0.8, 0.3, 0.3, 0.3, 0.1, -2.5, 4.0]
LABELS = [1, 1, 0, 1, 0, 0, 0, 1, 0]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", "evaluate", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(params=["csv", "jsonl"])
def data_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / f"scores.{request.param}"
    if request.param == "csv":
        rows = enumerate(zip(SCORES, LABELS, strict=True))
        path.write_text("id,score,label\n" + "".join(f"r{i},{s},{y}\n" for i, (s, y) in rows))
    else:
        pairs = zip(SCORES, LABELS, strict=True)
        path.write_text("".join(json.dumps({"score": s, "label": y}) + "\n" for s, y in pairs))
    return path


def test_json_report_is_exact_with_ties(data_file: Path) -> None:
    r = run(str(data_file), "--n", "1", "--n", "5", "--m", "1", "--m", "2", "--threshold", "0.5",
            "--target-fnr", "0.25")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    s, y = np.array(SCORES), np.array(LABELS)
    assert rep["positives"] == 4 and rep["negatives"] == 5
    assert rep["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert [(a["n"], a["m"]) for a in rep["aucs"]] == [(1, 1), (1, 2), (5, 1), (5, 2)]
    for a in rep["aucs"]:
        assert a["value"] == pytest.approx(ev.nm_auc(s, y, a["n"], a["m"]), abs=1e-12)
    assert rep["fnr"]["value"] == 0.5  # 0.3 and -2.5 are below 0.5
    assert rep["fnr"]["wilson"] == pytest.approx(list(wilson_interval(2, 4)))
    assert rep["fnr"]["clopper_pearson"] == pytest.approx(list(clopper_pearson_interval(2, 4)))
    assert rep["fpr"]["value"] == pytest.approx(2 / 5)  # 0.8 and 4.0
    assert rep["threshold_for_target_fnr"] == 0.3  # one miss of four allowed: -2.5


def test_text_format(data_file: Path) -> None:
    r = run(str(data_file), "--format", "text", "--threshold", "0.5")
    assert r.returncode == 0
    assert "positives 4, negatives 5" in r.stdout and "(5,1)-AUC" in r.stdout and "FNR at 0.5: 0.500000" in r.stdout


def test_fnr_and_threshold_only_when_asked(data_file: Path) -> None:
    rep = json.loads(run(str(data_file)).stdout)
    assert "fnr" not in rep and "threshold_for_target_fnr" not in rep
    assert [a["n"] for a in rep["aucs"]] == [1, 5, 20]


@pytest.mark.parametrize("content, suffix, fragment", [
    ("score,label\n0.5,1\n0.2,2\n", "csv", "line 3: label '2' must be 0 or 1"),
    ("score,label\n0.5,1\nabc,0\n", "csv", "line 3: score 'abc' is not a number"),
    ("score,label\n0.5,1\nnan,0\n", "csv", "line 3: score 'nan' is not finite"),
    ("value,label\n0.5,1\n", "csv", "line 1: header lacks column(s) score"),
    ('{"score": 1, "label": 1}\n{"score": 1}\n', "jsonl", "line 2: expected an object"),
    ('{"score": 1, "label": 1}\nnot json\n', "jsonl", "line 2: not valid JSON"),
    ('{"score": true, "label": 1}\n', "jsonl", "line 1: score True is not a number"),
    ("", "jsonl", "no rows"),
])
def test_bad_rows_name_the_line_and_exit_2(tmp_path: Path, content: str, suffix: str, fragment: str) -> None:
    path = tmp_path / f"bad.{suffix}"
    path.write_text(content)
    r = run(str(path))
    assert r.returncode == 2 and fragment in r.stderr and r.stdout == ""


@pytest.mark.parametrize("suffix, content", [
    ("csv", "score,label\n0.9,1\n0.2,0\n0.4,1\n"),
    ("jsonl", '{"score": 0.9, "label": 1}\n{"score": 0.2, "label": 0}\n{"score": 0.4, "label": 1}\n'),
])
def test_a_byte_order_mark_is_not_part_of_the_data(tmp_path: Path, suffix: str, content: str) -> None:
    # Spreadsheets export "CSV UTF-8" with a BOM: it was read into the first column's name ("\ufeffscore",
    # so the header "lacked" score), and made a JSON Lines file's first line invalid JSON.
    plain, marked = tmp_path / f"plain.{suffix}", tmp_path / f"marked.{suffix}"
    plain.write_text(content)
    marked.write_bytes(b"\xef\xbb\xbf" + content.encode())
    got = run(str(marked))
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == json.loads(run(str(plain)).stdout)


def test_an_n_m_order_past_the_limit_is_refused_before_reading(data_file: Path) -> None:
    r = run(str(data_file), "--n", "3000", "--m", "2")
    assert r.returncode == 2 and "needs N + M <= 2000 (got N=3000, M=2)" in r.stderr and r.stdout == ""
    assert run(str(data_file), "--n", "100000").returncode == 0  # N-AUC: any N


def test_labels_written_as_floats_are_read(tmp_path: Path) -> None:
    # pandas writes an integer column holding a missing value as floats ("1.0"): such a file was refused.
    ints, floats = tmp_path / "ints.csv", tmp_path / "floats.csv"
    ints.write_text("score,label\n0.9,1\n0.2,0\n0.4,1\n")
    floats.write_text("score,label\n0.9,1.0\n0.2,0.0\n0.4,1.0\n")
    got = run(str(floats))
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == json.loads(run(str(ints)).stdout)
    bad = tmp_path / "half.csv"
    bad.write_text("score,label\n0.9,1\n0.2,0.5\n")
    assert "line 3: label '0.5' must be 0 or 1" in run(str(bad)).stderr


def test_one_class_gives_null_not_zero(tmp_path: Path) -> None:
    path = tmp_path / "pos.csv"
    path.write_text("score,label\n0.2,1\n0.9,1\n")
    rep = json.loads(run(str(path), "--threshold", "0.5").stdout)
    assert rep["auc"] is None and rep["aucs"][0]["value"] is None
    assert rep["fnr"]["value"] == 0.5 and rep["fpr"]["value"] is None


def test_progress_bar_on_large_files_and_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 300_000
    y = rng.integers(0, 2, n)
    s = rng.normal(y * 1.0, 1.0)
    path = tmp_path / "big.csv"
    path.write_text("score,label\n" + "".join(f"{a:.5f},{b}\n" for a, b in zip(s, y, strict=True)))
    plot = tmp_path / "roc.png"
    r = run(str(path), "--plot", str(plot), "--n", "5")
    assert r.returncode == 0, r.stderr
    assert "100%" in r.stderr and "reading [" in r.stderr
    assert json.loads(r.stdout)["auc"] == pytest.approx(roc_auc_score(y, np.round(s, 5)), abs=1e-12)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
