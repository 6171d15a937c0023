"""int8 graphs on CPUs whose integer kernels can saturate: the worker says so when it loads one."""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

log = logging.getLogger("workers.detector")  # where operators have always found this warning


@functools.cache
def x86_vnni() -> bool | None:
    """Whether this x86 CPU has VNNI; None where the question does not arise (not x86) or cannot be
    answered (no /proc/cpuinfo: not Linux)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        return "vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def int8_kernels_may_saturate() -> bool:
    """x86 without VNNI: onnxruntime's u8s8 MatMulInteger sums pairs of products in 16 bits there
    (VPMADDUBSW) and can saturate; with VNNI (or on ARM) the integer products are exact. Where it
    cannot tell it says no: a warning at every start that may be false would be noise."""
    return x86_vnni() is False


def _uses_matmul_integer(path: Path) -> bool:
    import onnx

    return any(node.op_type == "MatMulInteger" for node in onnx.load(str(path), load_external_data=False).graph.node)


def warn_if_they_may_saturate(onnx_path: Path) -> None:
    """A warning when a CPU worker loads an int8 graph on a CPU whose int8 kernels can saturate."""
    if int8_kernels_may_saturate() and _uses_matmul_integer(onnx_path):
        log.warning("%s is int8, and this x86 CPU has no VNNI: onnxruntime's u8s8 kernels can saturate here, "
                    "so scores may differ from the ones its threshold was calibrated on. Serve the fp32 graph "
                    "instead (model.json \"onnx\": \"../minilm/encoder.onnx\"), or run on a CPU with VNNI.",
                    onnx_path.name)
