"""Message data on its way in: spooled as it arrives, within a global byte budget.

Message data used to be held whole in RAM and copied about three times (8 concurrent
24 MB messages peaked at 680 MB; 32 left the relay at 2.49 GB). Now:

``Spool(prefix)``
    One message: ``write(piece)`` as lines arrive. The first ``MEMORY_LIMIT`` bytes
    stay in memory; past that everything goes to an unlinked temporary file (in
    ``directory``, else the system's temporary directory) in ``FLUSH_AT`` chunks.
    ``finish()`` gives the data for the store: ``bytes`` when small, else a read-only
    ``mmap`` of the file (the store binds it as a blob without a Python copy). Both
    have ``find`` and slicing, so the header section is read without loading the body.
    ``close()`` frees the memory, the mapping and the file.

``InFlight(limit)``
    Bytes of message data being received or waiting for the store, across all
    sessions. ``reserve(n)`` is False once the limit would be passed (the session
    answers ``452 4.3.1``); ``release(n)`` gives bytes back.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import sys
import tempfile
from typing import IO

MEMORY_LIMIT = 64 * 1024  # bytes of one message kept in memory before it is spooled to a file
FLUSH_AT = 256 * 1024  # write to the file in chunks this big


def return_big_blocks_to_the_system() -> bool:
    """glibc serves big allocations (the store's copy of a message blob) from the heap
    once a big block has been freed (its mmap threshold grows, up to 32 MiB), and a
    fragmented heap is never given back: the relay stayed at 2.49 GB after 32 big
    messages. A fixed 1 MiB threshold keeps every big block a mapping of its own,
    returned on free. False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 1024 * 1024))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class InFlight:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.refused = 0

    def reserve(self, n: int) -> bool:
        if self.limit > 0 and self.used + n > self.limit:
            self.refused += 1
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)


class Spool:
    def __init__(self, prefix: bytes = b"", directory: str | None = None) -> None:
        self.prefix_length = len(prefix)
        self.size = len(prefix)
        self.reserved = 0  # bytes of the InFlight budget this spool holds
        self._directory = directory
        self._buffer = bytearray(prefix)
        self._file: IO[bytes] | None = None
        self._map: mmap.mmap | None = None
        self.spooled = False  # went to a file

    def write(self, piece: bytes) -> None:
        """Append; raises OSError (disk full) from the file."""
        self._buffer += piece
        self.size += len(piece)
        if self._file is None and len(self._buffer) > MEMORY_LIMIT:
            self._file = tempfile.TemporaryFile(prefix="smtpplus-spool-", dir=self._directory)
            self.spooled = True
        if self._file is not None and len(self._buffer) >= FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        assert self._file is not None
        self._file.write(self._buffer)
        self._buffer.clear()

    def discard(self) -> None:
        """Drop what was written (the message will be refused): memory and disk back now."""
        self._buffer.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self) -> bytes | mmap.mmap:
        """The whole data, prefix included, for the store."""
        if self._file is None:
            return bytes(self._buffer)
        self._flush()
        self._file.flush()
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def close(self) -> None:
        self._buffer = bytearray()
        if self._map is not None:
            # A commit still under way (its session gone) holds the buffer: then the
            # mapping goes when the last reference does.
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None
