"""The onnxruntime execution providers this machine can run, and the GPU it would run them on."""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Sequence

import onnxruntime as ort

log = logging.getLogger("workers.detector")  # where operators have always found these warnings


_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def usable_providers(preferred: Sequence[str]) -> list[str]:
    """`preferred` minus providers this machine cannot run. onnxruntime-gpu lists CUDA even with no
    driver present and then logs an error per session; skip GPU providers when no driver loads."""
    available = set(ort.get_available_providers())
    unknown = [p for p in preferred if p not in ort.get_all_providers()]
    if unknown:  # a typo would otherwise fall back to CPU without a word
        log.warning("REDLINE_PROVIDERS names unknown onnxruntime provider(s) %s; known: %s", ", ".join(unknown),
                    ", ".join(ort.get_all_providers()))
    chosen = [p for p in preferred if p in available]
    if any(p in _GPU_PROVIDERS for p in chosen) and not _gpu_driver_present():
        chosen = [p for p in chosen if p not in _GPU_PROVIDERS]
    return chosen or ["CPUExecutionProvider"]


@functools.cache
def _libcuda() -> ctypes.CDLL | None:
    """The NVIDIA driver's CUDA library, or None where there is no driver."""
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


@functools.cache
def _gpu_driver_present() -> bool:
    if _libcuda() is None:
        return False
    # With `onnxruntime-gpu[cuda,cudnn]` the CUDA libraries come as pip wheels; load them so the
    # CUDA provider finds them without LD_LIBRARY_PATH. A no-op where CUDA is installed system-wide.
    try:
        ort.preload_dlls()
    except Exception:  # older onnxruntime, or libraries found elsewhere: the session will tell
        log.debug("onnxruntime.preload_dlls failed", exc_info=True)
    return True


def gpu_name(device: int = 0) -> str | None:
    """The CUDA device's name (e.g. for benchmark records), from the driver; None without one."""
    cuda = _libcuda()
    handle, name = ctypes.c_int(), ctypes.create_string_buffer(256)
    if cuda is None or cuda.cuInit(0) or cuda.cuDeviceGet(ctypes.byref(handle), device) \
            or cuda.cuDeviceGetName(name, len(name), handle):
        return None
    return name.value.decode()
