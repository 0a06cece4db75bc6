"""Saving and loading models: one ``.safetensors`` file holds the weights, the optimizer state and what fit needs
to resume exactly.

The file is a plain `safetensors <https://huggingface.co/docs/safetensors>`_ file, readable by
``safetensors.numpy.load_file`` or ``safetensors.torch.load_file``:

- tensors ``layers.{i}.W`` ``(in, out)`` and ``layers.{i}.b`` ``(out,)`` in the model's dtype, and, when an optimizer
  is saved, its state ``optimizer.{j}.{name}`` (``j`` indexes ``model.parameters()``: ``2 i`` is ``W``, ``2 i + 1``
  is ``b`` of layer ``i``);
- one metadata entry, ``"gpunet"``: a JSON object with the format name and version, the gpunet version, the
  architecture (sizes, activations with their parameters, inits, dropout), dtype, seed, fused flag, precision, the
  last fit's loss and metrics, the optimizer (class, hyperparameters, step count), an fp16 fit's loss scale, the
  state of the shuffling generator (and of the dropout generator when NumPy draws the masks), a SHA-256 of every
  tensor, ``model.metadata`` when a model has one (any JSON value, e.g. the CLI's data transform), and
  ``model.feature_names`` when fit saw a DataFrame.

Loading parses JSON and raw tensors only: no pickle, so a file can never run code. Saving writes a temporary file in
the target's folder, syncs it to disk and renames it over the target: a crash leaves the old file or the new one,
never a torn one.

>>> import os, tempfile, gpunet as gn
>>> model = gn.Sequential([gn.Dense(2, 3, "relu"), gn.Dense(3, 1)], seed=0)
>>> with tempfile.TemporaryDirectory() as folder:
...     model.save(os.path.join(folder, "model.safetensors"))
...     restored = gn.load(os.path.join(folder, "model.safetensors"))
>>> restored.get_weights()[0].tolist() == model.get_weights()[0].tolist()
True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile

import numpy as np

from . import activations as activations_mod
from . import losses as losses_mod
from . import metrics as metrics_mod
from . import optim as optim_mod
from . import precision as precision_mod
from . import validation
from .backend import DTYPES, get_backend

FORMAT = "gpunet.Sequential"
FORMAT_VERSION = 1  # bump when a reader of the previous version would misread a new file
METADATA_KEY = "gpunet"
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
_SAFE_INT = 2**53  # larger integers are written as decimal strings (JSON readers may hold numbers as doubles)
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the header size


# -- save ------------------------------------------------------------------------------------------------------------
def save(model, path, optimizer=None) -> None:
    """Write ``model`` to ``path`` (``str`` or path-like; the ``.safetensors`` suffix is customary), atomically.

    Args:
        model: a :class:`gpunet.Sequential` on any device.
        path: the file to write; its folder must exist. An existing file is replaced only once the new one is
            complete on disk.
        optimizer: the optimizer whose state to store; ``None`` (default) stores ``model.optimizer``, the optimizer
            of the last fit, if any; ``False`` stores none. Its state is stored only when it belongs to ``model``
            (an optimizer that stepped another model restarts anyway).

    Raises:
        TypeError: ``model`` is not a Sequential, or holds a custom activation (only gpunet's own can be rebuilt),
            or ``optimizer`` is not an Optimizer of :mod:`gpunet.optim`, or ``model.metadata`` is not JSON.
        ValueError: a weight or optimizer state is NaN or infinite.
        OSError: the file cannot be written (the previous file, if any, is left as it was).

    In a data-parallel job (:func:`gpunet.distributed.init` with several ranks) only rank 0 writes the file.
    """
    from . import distributed

    path = _path(path)
    data = to_bytes(model, optimizer, path)  # (checked on every rank alike)
    if distributed.is_leader():  # in a data-parallel job only rank 0 writes (every rank holds the same model)
        _write_atomic(path, data)


def to_bytes(model, optimizer=None, path: str = "<bytes>") -> bytes:
    """The file :func:`save` writes, as bytes (``path`` only names the destination in error messages). Pickling
    does not go through this format (it keeps custom activations and non-finite weights)."""
    from . import __version__
    from .model import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a gpunet.Sequential; received {type(model).__name__}")
    optimizer = _optimizer_to_save(model, optimizer)
    generators = model.trainer.generator_states()
    tensors = {}
    for i, w in enumerate(model.get_weights()):
        tensors[f"layers.{i // 2}.{'Wb'[i % 2]}"] = w
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gpunet_version": __version__,
        "dtype": model.dtype,
        "seed": None if model.seed is None else _json_safe(int(model.seed)),
        "fused": bool(model.fused),
        "precision": model.precision,
        "ensemble_members": int(model.ensemble_members),
        "layers": [{"in_features": layer.in_features, "out_features": layer.out_features,
                    "activation": _config(layer.activation, activations_mod.ACTIVATIONS, "activation", strict=True),
                    "init": layer.init, "dropout": layer.dropout} for layer in model.layers],
        "loss": None if model.loss is None else _config(model.loss, losses_mod.LOSSES, "loss"),
        "metrics": [_config(m, metrics_mod.METRICS, "metric") for m in model.metrics],
        "optimizer": None,
        # dropout masks drawn by NumPy resume where they stopped; CuPy's generator lives on the GPU and restarts
        "shuffle_rng": _json_safe(generators["shuffle"]),
        "dropout_rng": None if generators["dropout"] is None else _json_safe(generators["dropout"]),
    }
    meta["metrics"] = [m for m in meta["metrics"] if m is not None]  # custom ones are left out (with a warning)
    scaler = model.trainer.loss_scale_state()
    if scaler is not None:  # the last fit's fp16 loss scale: a resumed fp16 fit goes on from it
        meta["grad_scaler"] = scaler
    if optimizer is not None:
        sd = optimizer.state_dict(model)  # another model's state is left out: step(model) would start afresh
        meta["optimizer"] = {"class": type(optimizer).__name__, "name": optimizer.name,
                             "hyperparameters": sd["hyperparameters"], "steps": sd["steps"], "state": None,
                             "initial_lr": sd["initial_lr"]}
        if sd["state"] is not None:
            meta["optimizer"]["state"] = [{k: v is not None for k, v in s.items()} for s in sd["state"]]
            for j, s in enumerate(sd["state"]):
                tensors.update({f"optimizer.{j}.{k}": v for k, v in s.items() if v is not None})
    for name, t in tensors.items():
        if not np.all(np.isfinite(t)):
            raise ValueError(f"cannot save to {path}: {name} holds NaN or infinity {_first_bad(t)}")
    meta["checksums"] = {name: _sha256(t) for name, t in tensors.items()}
    user = getattr(model, "metadata", None)
    if user is not None:
        meta["metadata"] = user
    if getattr(model, "feature_names", None) is not None:
        meta["feature_names"] = [str(c) for c in model.feature_names]
    try:
        text = json.dumps(meta, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot save to {path}: the metadata must be JSON (model.metadata and the loss, metric and "
                        f"optimizer settings): {exc}") from None
    import safetensors.numpy

    return safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                                  metadata={METADATA_KEY: text})


def _path(path) -> str:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; received {type(path).__name__}: {path!r}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        raise TypeError(f"path must be a str or os.PathLike of str; received {path!r}")
    return path


def _optimizer_to_save(model, optimizer):
    if optimizer is False:
        return None
    explicit = optimizer is not None
    optimizer = model.optimizer if optimizer is None else optimizer
    if optimizer is None:
        return None
    if not isinstance(optimizer, optim_mod.Optimizer):
        raise TypeError(f"optimizer must be a gpunet.optim.Optimizer, None (the model's) or False (none); "
                        f"received {type(optimizer).__name__}")
    if optim_mod.OPTIMIZERS.get(optimizer.name) is not type(optimizer):
        message = (f"{type(optimizer).__name__} is not one of gpunet's optimizers {sorted(optim_mod.OPTIMIZERS)}, "
                   f"so it cannot be rebuilt from a file")
        if explicit:
            raise TypeError(message + "; pass optimizer=False to save the model without it")
        validation.warn_at_caller(message + "; saving the model without it")
        return None
    return optimizer


def _config(obj, registry: dict, kind: str, strict: bool = False):
    """``{"name", "args"}`` for a built-in activation/loss/metric; ``None`` (with a warning) or TypeError for others."""
    if registry.get(getattr(obj, "name", None)) is not type(obj):
        message = f"{obj!r} is not one of gpunet's {kind}s {sorted(registry)}, so it cannot be rebuilt from a file"
        if strict:
            raise TypeError(message)
        validation.warn_at_caller(message + "; the file will not hold it")
        return None
    return {"name": obj.name, "args": dict(vars(obj))}


def _json_safe(value):
    """The bit generator's state as JSON: large integers as decimal strings, arrays as tagged lists."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"ndarray": [_json_safe(int(x)) for x in value.ravel()], "dtype": value.dtype.name,
                "shape": list(value.shape)}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        value = int(value)
        return value if abs(value) < _SAFE_INT else str(value)
    return value


def _from_json_safe(value):
    if isinstance(value, dict):
        if set(value) == {"ndarray", "dtype", "shape"}:
            return np.array([int(x) for x in value["ndarray"]], dtype=value["dtype"]).reshape(value["shape"])
        return {k: _from_json_safe(v) for k, v in value.items()}
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()).hexdigest()


def _first_bad(a: np.ndarray) -> str:
    index = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
    return f"(at [{', '.join(map(str, index))}]: {a[index]})"


def _write_bytes(handle, data: bytes) -> None:
    """Write ``data`` to the open file in 16 MiB pieces (a seam for tests that simulate a failing disk)."""
    view = memoryview(data)
    for start in range(0, len(view), 16 * 2**20):
        handle.write(view[start:start + 16 * 2**20])


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, sync it, rename it onto ``path``; clean up on failure."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {path}: the folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            _set_mode(handle.fileno(), path)
            _write_bytes(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _set_mode(fd: int, path: str) -> None:
    """Give the new file the old file's permissions, or the umask's (mkstemp makes it private to the owner)."""
    if not hasattr(os, "fchmod"):
        return
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        mode = 0o666 & ~umask
    with contextlib.suppress(OSError):
        os.fchmod(fd, mode)


def _fsync_folder(folder: str) -> None:
    """Persist the rename (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# -- load ------------------------------------------------------------------------------------------------------------
def load(path, device="cpu"):
    """Rebuild the :class:`gpunet.Sequential` saved at ``path`` on ``device`` (any value ``Sequential`` accepts;
    the saving device does not matter), with its dtype, weights, last loss and metrics, optimizer (state on
    ``device``, step count) and shuffling generator: ``fit`` continues exactly where the saved model stopped.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a gpunet model (not safetensors, truncated, corrupted, another program's
            safetensors file, a newer format version, tensors missing, extra, misshapen or not finite, unknown
            names in the metadata); the message names the file and the problem.
    """
    backend = get_backend(device)  # device errors are the caller's, not the file's
    path = _path(path)
    with open(path, "rb") as handle:
        data = handle.read()
    return from_bytes(data, backend, path)


def from_bytes(data: bytes, device="cpu", path: str = "<bytes>"):
    """:func:`load` from the bytes of a file (``path`` only names the source in error messages)."""
    from .layers import Dense
    from .model import Sequential

    backend = get_backend(device)
    header = _header(path, data)
    try:
        import safetensors.numpy

        tensors = safetensors.numpy.load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError (an Exception) for any malformed file
        raise ValueError(f"{path} is not a valid safetensors file (truncated or corrupted?): {exc}") from None
    meta = _metadata(path, header)

    def bad(message):
        return ValueError(f"{path}: {message}")

    try:
        dtype = meta["dtype"]
        if dtype not in DTYPES:
            raise bad(f"unknown dtype {dtype!r} in the metadata; expected one of {list(DTYPES)}")
        layers = []
        for i, spec in enumerate(meta["layers"]):
            act = _rebuild(path, f"layer {i}'s activation", spec["activation"], activations_mod.ACTIVATIONS)
            layers.append(_checked(path, f"layer {i}", Dense, spec["in_features"], spec["out_features"], act,
                                   spec["init"], spec.get("dropout", 0.0)))
        precision = meta.get("precision", "float32")  # files written before it was saved have none
        if precision not in precision_mod.PRECISIONS:
            raise bad(f"unknown precision {precision!r} in the metadata; expected one of {precision_mod.PRECISIONS}")
        model = _checked(path, "architecture", Sequential, layers, device=backend, dtype=dtype,
                         seed=_from_json_safe(meta["seed"]), fused=meta["fused"], precision=precision)
        loss = None if meta["loss"] is None else _rebuild(path, "loss", meta["loss"], losses_mod.LOSSES)
        metrics = [_rebuild(path, "metric", m, metrics_mod.METRICS) for m in meta["metrics"]]
        opt_meta = meta["optimizer"]
        expected = {}  # tensor name -> shape
        for i, layer in enumerate(layers):
            expected[f"layers.{i}.W"] = (layer.in_features, layer.out_features)
            expected[f"layers.{i}.b"] = (layer.out_features,)
        shapes = [tuple(p.shape) for p in model.parameters()]
        if opt_meta is not None and opt_meta["state"] is not None:
            if len(opt_meta["state"]) != len(shapes):
                raise bad(f"the optimizer state lists {len(opt_meta['state'])} parameters; the architecture has "
                          f"{len(shapes)}")
            for j, entry in enumerate(opt_meta["state"]):
                expected.update({f"optimizer.{j}.{k}": shapes[j] for k, stored in entry.items() if stored})
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing:
            raise bad(f"tensor(s) {validation.some(missing)} are missing (the file holds {len(tensors)} tensors: "
                      f"{validation.some(sorted(tensors))})")
        if extra:
            raise bad(f"unexpected tensor(s) {validation.some(extra)} (the metadata describes {len(expected)} tensors)")
        checksums = meta.get("checksums", {})
        for name, shape in expected.items():
            t = tensors[name]
            if t.shape != shape:
                raise bad(f"tensor {name!r} has shape {t.shape} but the architecture needs {shape}")
            if t.dtype != np.dtype(dtype):
                raise bad(f"tensor {name!r} has dtype {t.dtype} but the model's dtype is {dtype}")
            if name in checksums and _sha256(t) != checksums[name]:
                raise bad(f"tensor {name!r} does not match its SHA-256 checksum: the file is corrupted (or its "
                          f"tensors were edited after gpunet saved it)")
            if not np.all(np.isfinite(t)):
                raise bad(f"tensor {name!r} holds NaN or infinity {_first_bad(t)}")
        model.set_weights([tensors[f"layers.{i // 2}.{'Wb'[i % 2]}"] for i in range(len(shapes))])
        members = meta.get("ensemble_members", 1)
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise bad(f"invalid ensemble_members {members!r} in the gpunet metadata; expected a positive integer")
        model.ensemble_members = members
        model.loss, model.metrics = loss, metrics
        if opt_meta is not None:
            model.optimizer = _optimizer(path, opt_meta, tensors, model)
        dropout = meta.get("dropout_rng")
        model.trainer.set_generator_states({
            "shuffle": _generator(path, meta["shuffle_rng"]).bit_generator.state,
            "dropout": None if dropout is None else _generator(path, dropout).bit_generator.state})
        if meta.get("grad_scaler") is not None:  # taken up by the next fp16 fit (on any device)
            model.trainer.scaler_state = _checked(path, "loss scaler", precision_mod.GradScaler.check_state,
                                                  meta["grad_scaler"])
        if "metadata" in meta:
            model.metadata = meta["metadata"]
        if meta.get("feature_names") is not None:
            model.feature_names = [str(c) for c in meta["feature_names"]]
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise bad(f"malformed gpunet metadata ({type(exc).__name__}: {exc})") from None
    return model


def _header(path: str, data: bytes) -> dict:
    """The safetensors JSON header, checked enough to explain a truncated or corrupted file."""
    if len(data) < 8:
        raise ValueError(f"{path} is not a gpunet model file: {len(data)} bytes is too short for a safetensors "
                         f"file (truncated or empty?)")
    n = int.from_bytes(data[:8], "little")
    if n > _MAX_HEADER:
        raise ValueError(f"{path} is not a safetensors file (corrupted?): its first 8 bytes announce a "
                         f"{n}-byte header")
    if n > len(data) - 8:
        raise ValueError(f"{path} is truncated: its header alone should take {n} bytes but only {len(data) - 8} "
                         f"follow the length field")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a valid safetensors file (corrupted header: {exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a valid safetensors file (corrupted header: not a JSON object)")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except Exception:  # a malformed entry: left to safetensors' own checks
        end = 0
    if 8 + n + end > len(data):
        raise ValueError(f"{path} is truncated: it should be {8 + n + end} bytes long but has {len(data)}")
    return header


def _metadata(path: str, header: dict) -> dict:
    entry = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if entry is None:
        names = sorted(k for k in header if k != "__metadata__")
        raise ValueError(f"{path} is a safetensors file but not a gpunet model: its metadata lacks the "
                         f"{METADATA_KEY!r} entry (tensors: {validation.some(names)})")
    try:
        meta = json.loads(entry)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: the gpunet metadata is not valid JSON (corrupted?): {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path} is not a gpunet model: its metadata names the format {found!r}, not {FORMAT!r}")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: invalid format_version {version!r} in the gpunet metadata")
    if version > FORMAT_VERSION:
        from . import __version__

        raise ValueError(f"{path} uses gpunet file format version {version} (written by gpunet "
                         f"{meta.get('gpunet_version', '?')}); this gpunet ({__version__}) reads versions up to "
                         f"{FORMAT_VERSION}: upgrade gpunet to load it")
    return meta


def _checked(path: str, what: str, factory, *args, **kwargs):
    """``factory(*args, **kwargs)``, its argument errors reworded as a problem of the file."""
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid {what} in the gpunet metadata: {exc}") from None


def _rebuild(path: str, what: str, spec: dict, registry: dict):
    name = spec["name"]
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"{path}: unknown name {name!r} for {what} in the gpunet metadata; this gpunet knows "
                         f"{sorted(registry)}")
    args = spec.get("args", {})
    if not isinstance(args, dict):
        raise ValueError(f"{path}: the arguments of {what} must be a JSON object; received {args!r}")
    return _checked(path, what, registry[name], **args)


def _optimizer(path: str, spec: dict, tensors: dict, model):
    name = spec["name"]
    cls = optim_mod.OPTIMIZERS.get(name) if isinstance(name, str) else None
    if cls is None or cls.__name__ != spec.get("class", cls.__name__):
        raise ValueError(f"{path}: unknown optimizer {spec.get('class', name)!r} in the gpunet metadata; this gpunet "
                         f"knows {sorted(optim_mod.OPTIMIZERS)}")
    optimizer = _checked(path, "optimizer", cls, **spec["hyperparameters"])
    state = None
    if spec["state"] is not None:
        state = [{k: tensors[f"optimizer.{j}.{k}"] if stored else None for k, stored in entry.items()}
                 for j, entry in enumerate(spec["state"])]
    _checked(path, "optimizer state", optimizer.load_state_dict,
             {"hyperparameters": spec["hyperparameters"], "steps": spec["steps"], "state": state,
              "initial_lr": spec.get("initial_lr")}, model)
    return optimizer


def _generator(path: str, state) -> np.random.Generator:
    from .trainer import generator_from_state

    state = _from_json_safe(state)
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"{path}: unknown random bit generator {name!r} in the gpunet metadata; expected one of "
                         f"{list(_BIT_GENERATORS)}")
    try:
        return generator_from_state(state)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: invalid random generator state in the gpunet metadata "
                         f"({type(exc).__name__}: {exc})") from None
