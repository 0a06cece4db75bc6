"""Devices and array namespaces: where a model's arrays live and how data gets there.

A :class:`Backend` pairs an Array API namespace ``xp`` with a device. gpunet's math only ever talks to ``xp``;
this module is where devices and the library behind ``xp`` are resolved (``gpunet.backend.ops_for`` then picks that
library's specialised steps).

Device strings:

- ``"cpu"``: NumPy (through ``array_api_compat.numpy``).
- ``"cuda"`` / ``"cuda:N"``: CuPy on GPU ``N`` (imported lazily, on first use); ``"cuda"`` is GPU 0, or a
  data-parallel rank's own GPU (see :func:`gpunet.distributed.init`).
- ``"auto"``: CUDA if CuPy imports and sees a GPU, else the CPU.
- an Array API namespace module (``array_api_strict``, ``torch``, ``numpy``, ...): that library's default device.

Data moves host -> device once per call (``fit``, ``predict``, ...) and never inside the batch loop (``fit`` copies
only the shuffled row order, once per epoch). A CuPy array on another GPU than the model's is copied to the model's
GPU, once per call, as Keras does (torch would require ``.to(device)``).
"""

from __future__ import annotations

import contextlib
import types

import array_api_compat
import array_api_compat.numpy
import numpy as np

DTYPES = ("float32", "float64")


class Backend:
    """An Array API namespace ``xp`` plus a device: allocates, moves and converts arrays for a model.

    Build one with :func:`get_backend`; ``Backend`` objects are compared by ``(name, label)``.
    """

    def __init__(self, xp, name: str, device=None, cuda_index: int | None = None):
        self.xp = xp
        self.name = name  # "numpy", "cupy", "array_api_strict", "torch", ...
        self.device = device  # the namespace's own device object, or None for its default
        self.cuda_index = cuda_index

    def __repr__(self) -> str:
        return f"Backend({self.label!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Backend) and (self.name, self.label) == (other.name, other.label)

    def __hash__(self) -> int:
        return hash((self.name, self.label))

    @property
    def label(self) -> str:
        """A human-readable device name: ``"cpu"``, ``"cuda:0"``, ``"array_api_strict"``..."""
        if self.name == "numpy":
            return "cpu"
        if self.name == "cupy":
            return f"cuda:{self.cuda_index}"
        return self.name

    @property
    def is_numpy(self) -> bool:
        return self.name == "numpy"

    def activate(self):
        """Context in which new arrays land on this backend's device (CuPy ignores ``device=``)."""
        if self.name == "cupy":
            import cupy

            return cupy.cuda.Device(self.cuda_index)
        return contextlib.nullcontext()

    def dtype(self, name: str):
        """The namespace's dtype object for ``"float32"`` or ``"float64"``."""
        return getattr(self.xp, name)

    def owns(self, x) -> bool:
        """True if ``x`` is an array of this backend's library, on any of its devices (:meth:`to_device` and
        :meth:`cast` copy a CuPy array on another GPU onto this backend's)."""
        if self.name == "numpy":
            return isinstance(x, np.ndarray)
        try:
            return array_api_compat.array_namespace(x) is self.xp
        except TypeError:
            return False

    def random_generator(self, seed: np.random.SeedSequence):
        """A generator of uniform floats for dropout masks, seeded by ``seed``: ``rng.random(shape, dtype=name)``.
        CuPy's draws on its GPU (no host copy per batch); every other backend draws with NumPy on the host."""
        if self.name == "cupy":
            import cupy

            with self.activate():
                return cupy.random.default_rng(int(seed.generate_state(1, np.uint64)[0]))
        return np.random.default_rng(seed)

    def from_host(self, x: np.ndarray, dtype: str):
        """Copy a host NumPy array onto this backend's device as ``dtype``."""
        x = np.ascontiguousarray(x, dtype=dtype)
        if self.name == "numpy":
            return x
        with self.activate():
            return self.xp.asarray(x, dtype=self.dtype(dtype))

    def to_device(self, x):
        """``x`` on this backend's device: a CuPy array on another GPU is copied onto this backend's GPU; anything
        else (host data, arrays already here) is returned as is."""
        if self.name == "cupy" and array_api_compat.is_cupy_array(x) and x.device.id != self.cuda_index:
            with self.activate():
                return self.xp.asarray(x)  # CuPy copies an array of another GPU onto the current one
        return x

    def cast(self, x, dtype: str):
        """``x`` (an array of this backend) as ``dtype`` on this backend's device (see :meth:`to_device`), without a
        copy when it already is both."""
        x = self.to_device(x)
        if x.dtype == self.dtype(dtype):
            return x
        with self.activate():
            return self.xp.astype(x, self.dtype(dtype))


def on_device_of(x):
    """A context in which new arrays land on ``x``'s device. CuPy allocates, and runs kernels, on the current GPU
    whatever ``device=`` says (array-api-compat ignores it), so for a CuPy array this makes ``x``'s GPU current; for
    any other array it does nothing."""
    if array_api_compat.is_cupy_array(x):
        import cupy

        return cupy.cuda.Device(x.device.id)
    return contextlib.nullcontext()


def to_numpy(x) -> np.ndarray:
    """A host NumPy array of any supported array: a copy of GPU data, a view of data already in host memory (NumPy,
    CPU torch tensors, array-api-strict arrays)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_array_api_obj(x):
        return np.from_dlpack(x)
    return np.asarray(x)


def array_library(x) -> str:
    """A short name of the library ``x`` belongs to, for messages (``"numpy"``, ``"cupy"``, ``"torch"``...)."""
    return type(x).__module__.split(".")[0]


def cuda_info() -> dict:
    """What gpunet knows about CUDA here: ``{"available": bool, "reason": str, ...}``.

    When CuPy imports and sees GPUs, also ``"cupy"`` (version), ``"runtime"`` and ``"driver"`` (CUDA versions) and
    ``"devices"``: one ``{"index", "name", "compute_capability", "memory_gib"}`` per GPU. ``"reason"`` says why
    CUDA is unusable when it is. Never raises, and imports CuPy only when called.
    """
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising something else
        return {"available": False, "reason": f"CuPy is not importable ({type(exc).__name__}: {exc}); "
                                              f"install gpunet[cuda12] or gpunet[cuda13]"}
    info = {"available": False, "cupy": cupy.__version__}
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        info["runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception as exc:
        info["reason"] = f"CuPy {cupy.__version__} imports but CUDA does not answer ({type(exc).__name__}: {exc})"
        return info
    if count == 0:
        info["reason"] = f"CuPy {cupy.__version__} imports but sees no GPU"
        return info
    devices = []
    for index in range(count):
        props = cupy.cuda.runtime.getDeviceProperties(index)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        devices.append({"index": index, "name": name, "compute_capability": f"{props['major']}.{props['minor']}",
                        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1)})
    info.update(available=True, devices=devices,
                reason=f"{count} GPU(s), GPU 0 is {devices[0]['name']} (CuPy {cupy.__version__})")
    return info


def cuda_available() -> tuple[bool, str]:
    """``(True, description)`` if CuPy imports and sees a GPU, else ``(False, why not)``."""
    info = cuda_info()
    return info["available"], info["reason"]


_DEFAULT_CUDA_INDEX = 0  # the GPU "cuda" and "auto" mean; a data-parallel rank takes its own (set_default_cuda_index)


def set_default_cuda_index(index: int) -> None:
    """Make ``"cuda"`` (and ``"auto"``) mean GPU ``index`` in this process (:func:`gpunet.distributed.init` gives
    each rank of a node its own GPU)."""
    global _DEFAULT_CUDA_INDEX
    _DEFAULT_CUDA_INDEX = int(index)


def get_backend(device="cpu") -> Backend:
    """Resolve a device string or an Array API namespace module to a :class:`Backend`.

    >>> get_backend("cpu")
    Backend('cpu')
    """
    if isinstance(device, Backend):
        return device
    if isinstance(device, types.ModuleType):
        return _backend_for_module(device)
    if not isinstance(device, str):
        raise TypeError(
            f"device must be 'cpu', 'cuda', 'cuda:N', 'auto' or an Array API namespace module; "
            f"received {type(device).__name__}: {device!r}"
        )
    spec = device.strip().lower()
    if spec == "auto":
        return get_backend("cuda" if cuda_available()[0] else "cpu")
    if spec == "cpu":
        return Backend(array_api_compat.numpy, "numpy")
    if spec == "cuda" or spec.startswith("cuda:"):
        index_text = str(_DEFAULT_CUDA_INDEX) if spec == "cuda" else spec[5:]
        if not index_text.isdigit():
            raise ValueError(f"device must be 'cuda' or 'cuda:N' with N a GPU index; received device={device!r}")
        ok, why = cuda_available()
        if not ok:
            raise ValueError(f"device={device!r} is not usable: {why}. Use device='cpu' or device='auto'.")
        import cupy

        index = int(index_text)
        count = cupy.cuda.runtime.getDeviceCount()
        if index >= count:
            raise ValueError(f"device={device!r}: there are {count} GPU(s), so N must be in 0..{count - 1}")
        return Backend(array_api_compat.array_namespace(cupy.zeros(1)), "cupy", cuda_index=index)
    raise ValueError(
        f"device must be 'cpu', 'cuda', 'cuda:N', 'auto' or an Array API namespace module; received device={device!r}"
    )


def _backend_for_module(module: types.ModuleType) -> Backend:
    """A backend for a namespace module such as ``array_api_strict``, ``numpy``, ``torch`` or ``cupy``."""
    if module is np or module is array_api_compat.numpy:
        return get_backend("cpu")
    if module.__name__.split(".")[-1] == "cupy":
        return get_backend("cuda")
    try:
        xp = array_api_compat.array_namespace(module.asarray([0.0]))
    except Exception as exc:
        raise TypeError(
            f"device={module.__name__!r} is not an Array API namespace gpunet can use ({type(exc).__name__}: {exc})"
        ) from None
    return Backend(xp, module.__name__.split(".")[0])
