"""Allocation of the grown tensors.

Every grown tensor is new memory that is written once. On Linux, fresh anonymous memory is faulted in 4 KiB pages on
first touch, and for large tensors those faults cost more than the copy itself (measured in `make bench`). Asking the
kernel for transparent huge pages on the tensor's range (`madvise(MADV_HUGEPAGE)`, honoured when THP is in `madvise`
or `always` mode) faults it in 2 MiB pages instead. This is advice only: it never changes a value, and anywhere it is
unavailable (other OS, THP off, no libc) allocation simply proceeds as usual.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch

_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_MIN_BYTES = 8 << 20


@functools.cache
def _madvise():  # -> callable | None
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read()
        if "[never]" in mode:
            return None
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.madvise
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):
        return None


def empty_for_write(shape: list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`torch.empty`, with huge pages requested for large CPU tensors before they are first written."""
    out = torch.empty(shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if out.device.type == "cpu" and nbytes >= _MIN_BYTES and (madvise := _madvise()) is not None:
        start = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        end = (out.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if end > start:
            madvise(start, end - start, _MADV_HUGEPAGE)  # advice: a failure leaves ordinary pages
    return out
