"""Train-step timing on every device present: ``python scripts/bench_step.py --help`` (also ``gpunet bench``).

The benchmark lives in the package (``gpunet/bench.py``) so the installed ``gpunet bench`` command runs it too.
"""

import sys

from gpunet.bench import main

if __name__ == "__main__":
    sys.exit(main())
