"""Deriving the int8 (CPU) and fp16 (GPU) graphs at install (models.variants.ensure), and what a worker
says when it serves int8 on a CPU whose int8 kernels can saturate."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from models import assemble, int8, variants
from workers import int8_kernels
from workers.detector import OnnxModel

from .conftest import SHIPPED_MODELS


def test_ensure_leaves_current_variants_alone() -> None:
    built = variants.ensure()  # the session fixture built them already
    before = {key: path.stat().st_mtime_ns for key, path in built.items()}
    assert variants.ensure() == built
    assert {key: path.stat().st_mtime_ns for key, path in built.items()} == before
    for path in built.values():
        assert assemble.stamp(path).read_text().split() == [variants.digest(assemble.ENCODER), variants.RECIPE_VERSION]


def test_ensure_rebuilds_a_variant_derived_by_another_recipe(tmp_path: Path) -> None:
    built = variants.paths(tmp_path)
    for key, path in variants.ensure().items():
        shutil.copyfile(path, built[key])
        assemble.stamp(built[key]).write_text(f"{variants.digest(assemble.ENCODER)} an-older-recipe\n")
    built["int8"].write_bytes(b"not a graph")  # what a stale stamp lets through is replaced
    assert variants.ensure(out=tmp_path) == built
    assert variants.digest(built["int8"]) == variants.digest(variants.paths()["int8"])  # same bytes as the shipped
    assert assemble.stamp(built["fp16"]).read_text().split()[1] == variants.RECIPE_VERSION


def test_smoothing_factors_are_powers_of_two_and_absorb_last_bit_noise() -> None:
    rng = np.random.default_rng(0)
    s = np.exp(rng.normal(0, 2, size=10_000)).astype(np.float32)
    rounded = int8.power_of_two(s)
    assert np.all(np.log2(rounded) == np.round(np.log2(rounded)))
    assert np.all((rounded / s <= np.sqrt(2) + 1e-6) & (s / rounded <= np.sqrt(2) + 1e-6))
    # Ranges from another CPU's fp32 kernels differ in their last bits: the grid hides that.
    jittered = int8.power_of_two(s * (1 + rng.uniform(-1e-6, 1e-6, size=s.size)).astype(np.float32))
    assert np.mean(jittered == rounded) > 0.999


@pytest.mark.parametrize("saturates", [True, False])
def test_worker_warns_when_int8_kernels_can_saturate(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture, saturates: bool) -> None:
    monkeypatch.setattr(int8_kernels, "int8_kernels_may_saturate", lambda: saturates)
    tokenizer = SHIPPED_MODELS / "minilm" / "tokenizer.json"
    with caplog.at_level(logging.WARNING, logger="workers.detector"):
        OnnxModel(variants.paths()["int8"], tokenizer, 256, True, ["CPUExecutionProvider"])
        OnnxModel(assemble.ENCODER, tokenizer, 256, True, ["CPUExecutionProvider"])  # fp32: nothing to say
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (1 if saturates else 0)
    if saturates:
        assert "encoder.int8.onnx" in warnings[0] and "VNNI" in warnings[0] and "encoder.onnx" in warnings[0]
