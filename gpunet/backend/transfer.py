"""Moving streamed batches from host memory to the model's device.

A transfer takes a batch as a tuple of host NumPy arrays (already of the model's dtype, C-contiguous; ``None``
entries stay ``None``) and hands back arrays of the model's namespace:

    handle = transfer.upload(arrays)     start moving them
    arrays = transfer.ready(handle)      the device arrays, safe for the work enqueued next (the training step)
    transfer.overlaps                    True when uploading one batch ahead pays (the copy runs beside the step)

:class:`HostTransfer` is what every backend but CuPy uses: NumPy takes the arrays as they are (the host is the
device), other namespaces get one plain copy (``Backend.from_host``). :class:`PinnedTransfer` is CuPy's: each batch
is copied into page-locked host memory and from there to the GPU by an asynchronous copy on a side stream, so the
next batch travels while the current step computes. Two slots (pinned buffers and device buffers) are reused in turn:

    upload(b + 1), into slot s:
        host waits for slot s's last copy to finish        (its pinned buffers may then be overwritten)
        write the batch into slot s's pinned buffers
        record event s.consumed on the compute stream       (everything enqueued so far: the steps that read slot s)
        side stream waits for s.consumed                    (the copy must not overwrite buffers a step still reads)
        side stream: copy pinned -> device; record s.copied
    ready(b + 1):
        compute stream waits for s.copied                   (the step sees the whole copy; the host never blocks)

The device arrays handed out for a batch are views of a slot's buffers: valid until the batch after next is
uploaded, which the training loop never asks for before the step that uses them has been enqueued. An upload that is
never used (the batch after an interrupted epoch's last step, a prefetch dropped by a replay) is waited for on the
compute stream all the same (:meth:`PinnedTransfer.discard`; every copy when the transfer is deleted), so no later
use of the memory it writes can overtake it. The CUDA calls
go through a small runtime object (:class:`CupyRuntime`), so the ordering above is tested on the host with fake
streams and events (tests/test_streaming.py); the CuPy calls themselves need a GPU to run.
"""

from __future__ import annotations

import numpy as np


class HostTransfer:
    """Plain copies: NumPy arrays as they are on the CPU backend, ``backend.from_host`` for other namespaces."""

    overlaps = False

    def __init__(self, backend, dtype: str):
        self.backend, self.dtype = backend, dtype

    def upload(self, arrays):
        if self.backend.is_numpy:
            return tuple(None if a is None else np.ascontiguousarray(a, dtype=self.dtype) for a in arrays)
        return tuple(None if a is None else self.backend.from_host(a, self.dtype) for a in arrays)

    def ready(self, handle):
        return handle

    def discard(self, handle) -> None:
        pass


class CupyRuntime:
    """The CUDA operations :class:`PinnedTransfer` needs, through CuPy (``cupy.cuda`` streams and events,
    ``cupyx.empty_pinned``, ``ndarray.set(host, stream=)`` for an asynchronous host -> device copy)."""

    def __init__(self):
        import cupy
        import cupyx

        self._cupy, self._cupyx = cupy, cupyx

    def side_stream(self):
        return self._cupy.cuda.Stream(non_blocking=True)  # no implicit synchronisation with the default stream

    def event(self):
        return self._cupy.cuda.Event(disable_timing=True)

    def current_stream(self):
        return self._cupy.cuda.get_current_stream()

    def pinned(self, shape, dtype):
        return self._cupyx.empty_pinned(shape, dtype=dtype)

    def device_empty(self, shape, dtype):
        return self._cupy.empty(shape, dtype=dtype)

    def record(self, event, stream) -> None:
        event.record(stream)

    def wait(self, stream, event) -> None:
        stream.wait_event(event)

    def host_wait(self, event) -> None:
        event.synchronize()  # an event never recorded counts as done

    def copy(self, device, host, stream) -> None:
        device.set(host, stream=stream)  # cudaMemcpyAsync: asynchronous because ``host`` is page-locked


class _Slot:
    def __init__(self, runtime):
        self.consumed, self.copied = runtime.event(), runtime.event()
        self.pinned: list = []
        self.device: list = []


class PinnedTransfer:
    """Double-buffered uploads through page-locked memory on a side stream (see the module docstring).

    Args:
        runtime: :class:`CupyRuntime`, or a stand-in with the same methods (tests).
        slots: how many batches may be in flight (2: the one a step reads and the next one).
    """

    overlaps = True

    def __init__(self, runtime, slots: int = 2):
        self.runtime = runtime
        self.stream = runtime.side_stream()
        self.slots = [_Slot(runtime) for _ in range(slots)]
        self._next = 0

    def upload(self, arrays):
        rt = self.runtime
        slot = self.slots[self._next]
        self._next = (self._next + 1) % len(self.slots)
        rt.host_wait(slot.copied)  # the pinned buffers' previous copy has finished
        rows = None
        for i, a in enumerate(arrays):
            if a is None:
                continue
            rows = a.shape[0]
            self._fit(slot, i, a)
            np.copyto(slot.pinned[i][:rows], a)
        rt.record(slot.consumed, rt.current_stream())
        rt.wait(self.stream, slot.consumed)  # steps still reading this slot's device buffers finish first
        views = []
        for i, a in enumerate(arrays):
            if a is None:
                views.append(None)
                continue
            n = a.shape[0]
            device = slot.device[i][:n]
            rt.copy(device, slot.pinned[i][:n], self.stream)
            views.append(device)
        rt.record(slot.copied, self.stream)
        return slot, tuple(views)

    def ready(self, handle):
        slot, views = handle
        rt = self.runtime
        rt.wait(rt.current_stream(), slot.copied)
        return views

    def discard(self, handle) -> None:
        """An upload that will not be used: the compute stream still waits for its copy (see the module docstring)."""
        self.ready(handle)

    def __del__(self):
        try:
            rt = self.runtime
            for slot in self.slots:
                rt.wait(rt.current_stream(), slot.copied)
        except Exception:  # noqa: BLE001 - interpreter shutdown, or CUDA already torn down: nothing left to order
            pass

    def _fit(self, slot, i, a) -> None:
        """Buffers for array ``i`` of at least ``a``'s rows (grown, never shrunk: the last batch is a view)."""
        while len(slot.pinned) <= i:
            slot.pinned.append(None)
            slot.device.append(None)
        have = slot.pinned[i]
        if have is None or have.shape[0] < a.shape[0] or have.shape[1:] != a.shape[1:] or have.dtype != a.dtype:
            slot.pinned[i] = self.runtime.pinned(a.shape, a.dtype)
            slot.device[i] = self.runtime.device_empty(a.shape, a.dtype)


def for_backend(backend, dtype: str):
    """The transfer for a model's backend: :class:`PinnedTransfer` on CuPy, :class:`HostTransfer` elsewhere."""
    if backend.name == "cupy":
        with backend.activate():
            return PinnedTransfer(CupyRuntime())
    return HostTransfer(backend, dtype)
