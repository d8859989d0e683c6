"""The toy world's CPU kernels, pinned so its numbers do not depend on the machine.

torch picks its CPU kernels by what the processor offers (AVX2, AVX512, ...), and so does MKL;
each sums in its own order, so the last bits of a step differ between machines, and over ~1,500
pre-training steps those bits decide how far a world gets (measured here: after 40 steps the
loss already differs in the 7th digit between the AVX512 and AVX2 kernels of one machine; a
default 8-epoch world on an AVX512 machine gave insecure 66.5% where an earlier machine gave
21.8%). Every x86-64 machine of the last decade has AVX2, so the toy world asks for those
kernels everywhere: torch's (``ATEN_CPU_CAPABILITY``), MKL's (``MKL_CBWR``, its reproducibility
mode) and oneDNN's (``ONEDNN_MAX_CPU_ISA``). The variables are read when torch starts, so this
must run before torch is imported; afterwards it can only say what torch uses. A user's own
setting of any of them wins; ``EMLAB_PIN_KERNELS=0`` turns the pinning off.
"""

from __future__ import annotations

import os
import platform
import sys

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pin() -> bool:
    """Ask for the AVX2 kernels (x86-64 only). True when torch will start with them."""
    if os.environ.get("EMLAB_PIN_KERNELS", "1") == "0":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if "torch" in sys.modules:
        return os.environ.get("ATEN_CPU_CAPABILITY") == PINNED["ATEN_CPU_CAPABILITY"]
    for k, v in PINNED.items():
        os.environ.setdefault(k, v)
    return True


def in_use() -> dict:
    """What this process computes with: recorded beside a world's numbers."""
    import torch

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "torch": torch.__version__.split("+")[0],
            **{k: os.environ.get(k) for k in PINNED}}
