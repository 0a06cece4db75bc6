"""gpunet: dense neural networks written once on the Python Array API; NumPy on the CPU, CuPy on NVIDIA GPUs.

>>> import gpunet as gn
>>> model = gn.Sequential([gn.Dense(4, 8, "relu"), gn.Dense(8, 3, "softmax")], device="cpu", seed=0)
>>> model.count_params()
67
"""

from . import activations, callbacks, distributed, losses, metrics, optim, precision, sources, tabular
from .backend import Backend, cuda_available, cuda_info, get_backend, to_numpy
from .layers import Dense
from .callbacks import History, NonFiniteLossError
from .io import load, save
from .model import Sequential
from .plotting import plot_history
from .recipe import Recipe, TableModel

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "Dense",
    "History",
    "Recipe",
    "Sequential",
    "TableModel",
    "NonFiniteLossError",
    "activations",
    "callbacks",
    "cuda_available",
    "cuda_info",
    "distributed",
    "get_backend",
    "load",
    "losses",
    "metrics",
    "optim",
    "plot_history",
    "precision",
    "save",
    "sources",
    "tabular",
    "to_numpy",
]
