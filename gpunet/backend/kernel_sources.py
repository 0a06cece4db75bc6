"""Find and read the CUDA C++ sources in ``kernels/``.

In a wheel they ship as ``gpunet/kernels/`` (package data, found through ``importlib.resources``); in a source
checkout or an editable install they are read from the repository's top-level ``kernels/`` folder.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from pathlib import Path

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)
_PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\s*$", re.MULTILINE)


def kernels_dir():
    """The folder holding the ``.cuh`` files (a ``Traversable`` inside a wheel, a ``Path`` in a checkout)."""
    packaged = importlib.resources.files("gpunet") / "kernels"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "kernels"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"gpunet's CUDA kernel sources are missing: neither {packaged} nor {checkout} exists")


def kernel_files() -> list[str]:
    """Names of all kernel source files."""
    return sorted(entry.name for entry in kernels_dir().iterdir() if entry.name.endswith(".cuh"))


@functools.cache
def kernel_source(name: str) -> str:
    """The text of ``kernels/<name>`` with its local ``#include "..."`` lines replaced by the files' text (each file
    once), ready to be a ``cupy.ElementwiseKernel`` preamble: NVRTC is given no include path for these files."""
    seen: set[str] = set()

    def expand(file_name: str) -> str:
        if file_name in seen:
            return ""
        seen.add(file_name)
        text = (kernels_dir() / file_name).read_text(encoding="utf-8")
        text = _PRAGMA_ONCE.sub("", text)
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(name)
