"""Fused-kernel bandwidth on the GPU: ``python scripts/bench_kernels.py --help`` (also part of ``gpunet bench``).

The benchmark lives in the package (``gpunet/bench_kernels.py``) so the installed ``gpunet bench`` command runs it too.
"""

import sys

from gpunet.bench_kernels import main

if __name__ == "__main__":
    sys.exit(main())
