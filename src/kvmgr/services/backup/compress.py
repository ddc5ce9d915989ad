"""zstd through the system's libzstd (ctypes), and the rule for when compressing pays.

Debian's libvirt and QEMU already pull in libzstd, so calling it directly adds no package to
install; without it, chunks are stored as they are.  ctypes releases the GIL around the call, so
threads compressing chunks run on several cores.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass

from kvmgr.errors import OperationFailed

#: Level 1: several hundred MB/s per core; higher levels cost more time than they save bytes here.
LEVEL = 1


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("zstd") or "libzstd.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.ZSTD_compressBound.restype = ctypes.c_size_t
    lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
    lib.ZSTD_compress.restype = ctypes.c_size_t
    lib.ZSTD_compress.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
    ]
    lib.ZSTD_createCCtx.restype = ctypes.c_void_p
    lib.ZSTD_createCCtx.argtypes = []
    lib.ZSTD_compressCCtx.restype = ctypes.c_size_t
    lib.ZSTD_compressCCtx.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
    ]
    lib.ZSTD_decompress.restype = ctypes.c_size_t
    lib.ZSTD_decompress.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
    ]
    lib.ZSTD_isError.restype = ctypes.c_uint
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    return lib


_LIB = _load()


def available() -> bool:
    return _LIB is not None


_local = threading.local()


def _context() -> int:
    """This thread's compression context: reusing one saves an allocation per chunk."""
    assert _LIB is not None
    ctx: int | None = getattr(_local, "cctx", None)
    if ctx is None:
        ctx = _LIB.ZSTD_createCCtx()
        if not ctx:
            raise OperationFailed("zstd could not allocate a compression context")
        _local.cctx = ctx
    return ctx


def compress(data: bytes | bytearray | memoryview) -> bytes:
    if _LIB is None:
        raise OperationFailed("libzstd is not installed", hint="apt-get install libzstd1")
    size = len(data)
    bound = _LIB.ZSTD_compressBound(size)
    out = ctypes.create_string_buffer(bound)
    view = memoryview(data)
    # A writable buffer (the NBD client's bytearray) is passed without a copy.
    src = (ctypes.c_char * size).from_buffer(view) if not view.readonly else bytes(view)
    got = _LIB.ZSTD_compressCCtx(_context(), out, bound, src, size, LEVEL)
    if _LIB.ZSTD_isError(got):
        raise OperationFailed("zstd could not compress a chunk")
    return ctypes.string_at(out, got)


def decompress(data: bytes, size: int) -> bytes:
    """The ``size`` bytes that ``data`` was compressed from."""
    if _LIB is None:
        raise OperationFailed(
            "this backup holds zstd-compressed chunks but libzstd is not installed",
            hint="apt-get install libzstd1",
        )
    out = ctypes.create_string_buffer(size)
    got = _LIB.ZSTD_decompress(out, size, data, len(data))
    if _LIB.ZSTD_isError(got) or got != size:
        raise OperationFailed("a stored chunk does not decompress to its recorded size")
    return out.raw


@dataclass
class Payoff:
    """Compress while it pays: after a chunk that saved too little, skip a stretch, then probe.

    Random or already-compressed data then costs one trial per ``SKIP`` chunks instead of one
    per chunk; text, zeros-with-noise and file system metadata stay compressed.
    """

    SKIP = 32
    #: a compressed chunk must be at most this fraction of the original to be kept
    KEEP_BELOW = 0.875
    skipping: int = 0
    enabled: bool = True

    def should_try(self) -> bool:
        if _LIB is None or not self.enabled:
            return False
        if self.skipping:
            self.skipping -= 1
            return False
        return True

    def judge(self, original: int, compressed: int) -> bool:
        """Whether to keep the compressed form; a poor result starts a stretch without trials."""
        if compressed <= original * self.KEEP_BELOW:
            return True
        self.skipping = self.SKIP
        return False
