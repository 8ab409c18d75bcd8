"""pipec.cuda — CUDA devices, streams, events and the caching allocator's statistics.

Mirrors ``torch.cuda``: ``is_available``, ``device_count``, ``current_device``,
``set_device``, ``synchronize``, ``Stream``, ``Event``, ``stream(s)``, ``current_stream``,
``default_stream``, ``memory_allocated``, ``max_memory_allocated``, ``memory_reserved``,
``max_memory_reserved``, ``reset_peak_memory_stats``, ``memory_stats``, ``empty_cache``,
``mem_get_info``, ``get_device_name``, ``get_device_capability``, ``get_device_properties``.

Everything lives in C (``pipec._C._cuda_*``): one context per device with a compute stream
(what ``default_stream()`` returns), communication streams, cuBLAS handles and a caching
allocator. The current stream is per thread and per device, like torch's. Streams and events
are referred to by their CUDA handles (``Stream.cuda_stream``, ``Event.cuda_event``), so they
can be handed to other libraries (``torch.cuda.ExternalStream(s.cuda_stream)``).

This module imports cleanly when pipec was built without CUDA: ``is_available()`` is then
False, ``device_count()`` 0, the memory statistics 0, and everything that needs a device
raises ``RuntimeError``.
"""

import contextlib

from .. import _C

__all__ = [
    "is_available", "is_built", "device_count", "current_device", "set_device", "device",
    "synchronize", "Stream", "ExternalStream", "Event", "stream", "current_stream",
    "default_stream", "memory_allocated", "max_memory_allocated", "memory_reserved",
    "max_memory_reserved", "reset_peak_memory_stats", "reset_max_memory_allocated",
    "memory_stats", "empty_cache", "mem_get_info", "get_device_name",
    "get_device_capability", "get_device_properties",
]

_BUILT = bool(getattr(_C, "_cuda_built", False))


def is_built():
    """True when this pipec was compiled with CUDA support."""
    return _BUILT


def is_available():
    """True when pipec was built with CUDA and at least one GPU is usable."""
    return _BUILT and bool(_C._cuda_is_available())


def device_count():
    """Number of visible CUDA devices (0 without a driver or GPU)."""
    return int(_C._cuda_device_count()) if _BUILT else 0


def _require():
    if not _BUILT:
        raise RuntimeError("pipec was built without CUDA (pipec.cuda.is_built() is False)")
    if not _C._cuda_is_available():
        raise RuntimeError("no CUDA device is available (pipec.cuda.is_available() is False)")


def _check(obj, cls, what):
    if not isinstance(obj, cls):
        raise TypeError(f"{what} must be a pipec.cuda.{cls.__name__}, got {type(obj).__name__}")
    return obj


def _device_index(dev, optional=True):
    """CUDA ordinal for None (the current device), an int, 'cuda', 'cuda:N' or a device."""
    if dev is None:
        if not optional:
            raise ValueError("a CUDA device is required")
        return current_device()
    if isinstance(dev, int) and not isinstance(dev, bool):
        return dev
    text = str(dev)
    if text == "cuda":
        return current_device()
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    idx = getattr(dev, "index", None)
    if getattr(dev, "type", None) == "cuda":
        return current_device() if idx is None else int(idx)
    raise ValueError(f"expected a CUDA device (int, 'cuda', 'cuda:N' or pipec.device), "
                     f"got {dev!r}")


def current_device():
    """Index of the calling thread's current CUDA device."""
    _require()
    return int(_C._cuda_current_device())


def set_device(device):
    """Make `device` the calling thread's current CUDA device."""
    _require()
    _C._cuda_set_device(_device_index(device))


class device:  # noqa: N801 (torch's name)
    """Context manager that makes `device` current and restores the previous one."""

    def __init__(self, device):
        self.idx = -1 if device is None else _device_index(device)
        self.prev = -1

    def __enter__(self):
        if self.idx >= 0:
            self.prev = current_device()
            if self.prev != self.idx:
                set_device(self.idx)
        return self

    def __exit__(self, *exc):
        if self.idx >= 0 and self.prev != self.idx:
            set_device(self.prev)
        return False


def synchronize(device=None):
    """Wait for all work queued on `device` (default: the current one)."""
    _require()
    _C._cuda_synchronize(_device_index(device))


# ---- streams ----

class Stream:
    """A CUDA stream on `device` (default: current). priority 0 is normal; negative numbers are
    higher priority, as in torch. The stream is destroyed (after finishing its work) when the
    object is garbage collected, unless it wraps a stream pipec does not own."""

    def __new__(cls, device=None, priority=0, **kwargs):
        _require()
        self = super().__new__(cls)
        self._owned = False
        self.device_index = _device_index(device)
        handle = kwargs.get("_handle")
        if handle is None:
            handle = _C._cuda_stream_create(self.device_index, int(priority), False)
            self._owned = True
        self.cuda_stream = int(handle)
        return self

    def __init__(self, device=None, priority=0, **kwargs):
        pass

    @property
    def device(self):
        from .. import device as _dev
        return _dev("cuda", self.device_index)

    def query(self):
        """True when all work queued on the stream has finished."""
        return bool(_C._cuda_stream_query(self.cuda_stream))

    def synchronize(self):
        """Wait for all work queued on the stream."""
        _C._cuda_stream_synchronize(self.cuda_stream)

    def wait_event(self, event):
        """Future work on this stream waits for `event`'s last record."""
        _check(event, Event, "wait_event: event")
        if event.cuda_event is None:
            return  # never recorded: nothing to wait for (torch does the same)
        _C._cuda_stream_wait_event(self.cuda_stream, event.cuda_event)

    def wait_stream(self, stream):
        """Future work on this stream waits for the work queued so far on `stream`."""
        _check(stream, Stream, "wait_stream: stream")
        _C._cuda_stream_wait_stream(self.device_index, self.cuda_stream, stream.cuda_stream)

    def record_event(self, event=None):
        """Record `event` (a new one when None) on this stream and return it."""
        if event is None:
            event = Event()
        event.record(self)
        return event

    def __eq__(self, other):
        return isinstance(other, Stream) and other.cuda_stream == self.cuda_stream

    def __hash__(self):
        return hash((self.cuda_stream, self.device_index))

    def __repr__(self):
        return (f"<pipec.cuda.Stream device=cuda:{self.device_index} "
                f"cuda_stream={self.cuda_stream:#x}>")

    def __del__(self):
        if getattr(self, "_owned", False):
            self._owned = False
            try:
                _C._cuda_stream_destroy(self.device_index, self.cuda_stream)
            except Exception:  # noqa: BLE001 (clean-up never raises)
                pass


class ExternalStream(Stream):
    """Wraps a stream created elsewhere (e.g. ``torch.cuda.current_stream().cuda_stream``).
    pipec never destroys it; keep the owner alive while pipec uses it."""

    def __new__(cls, stream_ptr, device=None):
        return super().__new__(cls, device, _handle=int(stream_ptr))

    def __init__(self, stream_ptr, device=None):
        pass


def _wrap_stream(handle, index):
    return Stream(index, _handle=handle)


def current_stream(device=None):
    """The calling thread's current stream on `device`."""
    _require()
    idx = _device_index(device)
    return _wrap_stream(_C._cuda_current_stream(idx), idx)


def default_stream(device=None):
    """The device's compute stream (what pipec uses when no other stream is current)."""
    _require()
    idx = _device_index(device)
    return _wrap_stream(_C._cuda_compute_stream(idx), idx)


def set_stream(stream):
    """Make `stream` current on its device for the calling thread."""
    if stream is None:
        return
    _require()
    _check(stream, Stream, "set_stream: stream")
    _C._cuda_set_stream(stream.device_index, stream.cuda_stream)


@contextlib.contextmanager
def stream(stream):
    """Context manager: pipec's kernels on the stream's device run on `stream` inside the
    block (calling thread only); the previous stream is restored on exit. None: no-op."""
    if stream is None:
        yield None
        return
    _require()
    _check(stream, Stream, "stream")
    idx = stream.device_index
    prev = _C._cuda_current_stream(idx)
    prev_dev = current_device()
    _C._cuda_set_stream(idx, stream.cuda_stream)
    if prev_dev != idx:
        _C._cuda_set_device(idx)
    try:
        yield stream
    finally:
        _C._cuda_set_stream(idx, prev)
        if prev_dev != idx:
            _C._cuda_set_device(prev_dev)


# ---- events ----

class Event:
    """A CUDA event. enable_timing=True allows elapsed_time(); blocking=True makes
    synchronize() sleep instead of spin. Created lazily on the device of its first record."""

    def __init__(self, enable_timing=False, blocking=False, interprocess=False):
        self.enable_timing = bool(enable_timing)
        self.blocking = bool(blocking)
        self.interprocess = bool(interprocess)
        self.cuda_event = None
        self.device_index = None

    def record(self, stream=None):
        """Record on `stream` (default: the current stream of the current device)."""
        _require()
        if stream is None:
            stream = current_stream()
        _check(stream, Stream, "Event.record: stream")
        if self.cuda_event is None:
            self.device_index = stream.device_index
            self.cuda_event = int(_C._cuda_event_create(
                self.device_index, self.enable_timing, self.blocking, self.interprocess))
        elif stream.device_index != self.device_index:
            raise ValueError(f"Event was created on cuda:{self.device_index} but the stream is "
                             f"on cuda:{stream.device_index}")
        _C._cuda_event_record(self.cuda_event, stream.cuda_stream)

    def wait(self, stream=None):
        """Future work on `stream` (default: current) waits for this event."""
        if self.cuda_event is None:
            return
        if stream is None:
            stream = current_stream(self.device_index)
        _check(stream, Stream, "Event.wait: stream")
        stream.wait_event(self)

    def query(self):
        """True when the recorded work has finished (or the event was never recorded)."""
        if self.cuda_event is None:
            return True
        return bool(_C._cuda_event_query(self.cuda_event))

    def synchronize(self):
        """Wait for the recorded work to finish."""
        if self.cuda_event is not None:
            _C._cuda_event_synchronize(self.cuda_event)

    def elapsed_time(self, end_event):
        """Milliseconds between this event and `end_event` (both recorded, timing on)."""
        _check(end_event, Event, "elapsed_time: end_event")
        if not (self.enable_timing and end_event.enable_timing):
            raise RuntimeError("elapsed_time needs both events created with enable_timing=True")
        if self.cuda_event is None or end_event.cuda_event is None:
            raise RuntimeError("elapsed_time: both events must be recorded first")
        return float(_C._cuda_event_elapsed_time(self.cuda_event, end_event.cuda_event))

    def __repr__(self):
        h = "uninitialized" if self.cuda_event is None else f"{self.cuda_event:#x}"
        return f"<pipec.cuda.Event {h}>"

    def __del__(self):
        h = getattr(self, "cuda_event", None)
        if h is not None:
            self.cuda_event = None
            try:
                _C._cuda_event_destroy(h)
            except Exception:  # noqa: BLE001 (clean-up never raises)
                pass


# ---- memory ----

def _stats_or_none(device):
    if not is_available():
        return None
    return _C._cuda_memory_stats(_device_index(device))


def memory_stats(device=None):
    """The caching allocator's counters for `device` (torch's key names where torch has
    them); {} without CUDA."""
    s = _stats_or_none(device)
    return {} if s is None else dict(s)


def memory_allocated(device=None):
    """Bytes held by live tensors on `device` (block sizes, as torch reports)."""
    s = _stats_or_none(device)
    return 0 if s is None else s["allocated_bytes.all.current"]


def max_memory_allocated(device=None):
    """Peak of memory_allocated() since start or the last reset_peak_memory_stats()."""
    s = _stats_or_none(device)
    return 0 if s is None else s["allocated_bytes.all.peak"]


def memory_reserved(device=None):
    """Bytes the caching allocator holds from the driver (allocated + cached)."""
    s = _stats_or_none(device)
    return 0 if s is None else s["reserved_bytes.all.current"]


def max_memory_reserved(device=None):
    """Peak of memory_reserved()."""
    s = _stats_or_none(device)
    return 0 if s is None else s["reserved_bytes.all.peak"]


def reset_peak_memory_stats(device=None):
    """Restart the peaks from the current values."""
    if is_available():
        _C._cuda_reset_peak_memory_stats(_device_index(device))


reset_max_memory_allocated = reset_peak_memory_stats


def empty_cache():
    """Return every unused cached block of every device to the driver."""
    if is_available():
        _C._cuda_empty_cache(-1)


def mem_get_info(device=None):
    """(free, total) bytes of `device` as the driver reports them."""
    _require()
    return tuple(_C._cuda_mem_get_info(_device_index(device)))


# ---- device properties ----

class _DeviceProperties:
    __slots__ = ("name", "major", "minor", "total_memory", "multi_processor_count",
                 "l2_cache_size")

    def __init__(self, d):
        for k in self.__slots__:
            setattr(self, k, d[k])

    def __repr__(self):
        return (f"_CudaDeviceProperties(name='{self.name}', major={self.major}, "
                f"minor={self.minor}, total_memory={self.total_memory // (1 << 20)}MB, "
                f"multi_processor_count={self.multi_processor_count})")


def get_device_properties(device=None):
    _require()
    return _DeviceProperties(_C._cuda_get_device_properties(_device_index(device)))


def get_device_name(device=None):
    return get_device_properties(device).name


def get_device_capability(device=None):
    p = get_device_properties(device)
    return (p.major, p.minor)
