"""Root pytest configuration: doctest collection of gpunet/ skips modules whose optional dependency is missing."""

import importlib.util

collect_ignore = []
if importlib.util.find_spec("sklearn") is None:
    collect_ignore.append("gpunet/sklearn.py")
if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
    collect_ignore.append("gpunet/export.py")
