"""The wheel: built (non-editable) from the checkout, it ships the CUDA kernel sources as ``gpunet/kernels/`` and
works installed on its own, away from the checkout."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import gpunet
from gpunet.backend import kernel_sources

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter with cwd outside the repository and only the installed copy on PYTHONPATH (plus the
# interpreter's own site-packages, for numpy and array_api_compat): argv = target folder, expected kernel files.
INSTALLED_CHECK = r"""
import json, sys
from pathlib import Path

import numpy as np

import gpunet as gn
from gpunet.backend import kernel_sources

target = Path(sys.argv[1]).resolve()
assert Path(gn.__file__).resolve().is_relative_to(target), f"imported {gn.__file__}, not the copy in {target}"
kernels = Path(str(kernel_sources.kernels_dir())).resolve()
assert kernels == target / "gpunet" / "kernels", f"kernel sources read from {kernels}"
assert kernel_sources.kernel_files() == json.loads(sys.argv[2]), kernel_sources.kernel_files()
assert "gn_relu_fwd" in kernel_sources.kernel_source("activations.cuh")
for name in kernel_sources.kernel_files():
    assert '#include "' not in kernel_sources.kernel_source(name), name

rng = np.random.default_rng(0)
X = rng.normal(size=(96, 4)).astype("float32")
y = (X[:, 0] + X[:, 1] > 0).astype("int64")
model = gn.Sequential([gn.Dense(4, 8, activation="relu"), gn.Dense(8, 2, activation="softmax")], seed=0)
history = model.fit(X, y, loss="cce", optimizer=gn.optim.Adam(lr=1e-2), epochs=2, batch_size=16)
losses = history["loss"]
assert len(losses) == 2 and all(np.isfinite(losses)), losses
print("installed gpunet OK", gn.__file__, losses)
"""


def run(command, **kwargs):
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_wheel_ships_kernels_and_works_installed(tmp_path):
    # build: offline with the hatchling of this environment when there is one, else in an isolated environment
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    offline = importlib.util.find_spec("hatchling") is not None
    wheels = tmp_path / "wheels"
    run(pip + ["wheel", "--no-deps", "-w", str(wheels), str(ROOT)]
        + (["--no-build-isolation", "--no-index"] if offline else []))
    (wheel,) = wheels.glob("gpunet-*.whl")
    assert wheel.name == f"gpunet-{gpunet.__version__}-py3-none-any.whl"

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected_kernels = kernel_sources.kernel_files()
    assert expected_kernels, "no kernel sources in the checkout"
    for name in expected_kernels:
        assert f"gpunet/kernels/{name}" in names, f"{name} is missing from the wheel"
    for module in ("gpunet/__init__.py", "gpunet/backend/__init__.py", "gpunet/backend/cuda_ops.py",
                   "gpunet/backend/kernel_sources.py", "gpunet/backend/reference.py", "gpunet/backend/numpy_ops.py"):
        assert module in names, f"{module} is missing from the wheel"
    assert not any(name.startswith(("tests/", "kernels/")) for name in names), sorted(names)

    target = tmp_path / "site"
    run(pip + ["install", "--no-deps", "--no-index", "--target", str(target), str(wheel)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GPUNET"))}
    # keep PYTHONPATH entries that hold dependencies (carried wheels on a GPU machine), never one with a gpunet
    kept = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if entry and not (Path(entry) / "gpunet").exists()]
    env["PYTHONPATH"] = os.pathsep.join([str(target), *kept])
    done = run([sys.executable, "-c", INSTALLED_CHECK, str(target), json.dumps(expected_kernels)], cwd=elsewhere,
               env=env)
    assert "installed gpunet OK" in done.stdout
