"""Finding repeated examples in a file of any size, in fixed memory.

Owns `SeenLines`: an open-addressing table of 64-bit hashes (SipHash) and the line that first had
each, in one anonymous memory map of fixed size (12 MiB for 2**20 slots). Pages are committed only
when touched, so a small file costs little and a huge one never more than the map. Once 70% of
the slots are used, new examples are no longer remembered (they are still compared with the ones
remembered), so detection is exact for the first ~730,000 distinct examples and partial after that:
`full` says so. A 64-bit hash collision (about 1 in 10**7 for a million examples) would report a
false duplicate; the message quotes both lines so a person can tell. Does not own what counts as
"the same" example (files/validate.py hashes the line's JSON text).
"""

from __future__ import annotations

import mmap

DEFAULT_SLOTS_LOG2 = 20
MAX_LOAD = 0.7


class SeenLines:
    def __init__(self, slots_log2: int = DEFAULT_SLOTS_LOG2):
        n = 1 << slots_log2
        self._mask = n - 1
        self._map = mmap.mmap(-1, 12 * n)  # zero-filled, committed lazily by the kernel
        self._view = memoryview(self._map)
        self._keys = self._view[: 8 * n].cast("Q")
        self._lines = self._view[8 * n :].cast("I")
        self._limit = int(n * MAX_LOAD)
        self.size = 0
        self.full = False

    def first_line(self, data: bytes, line: int) -> int | None:
        """The earlier line with the same bytes, or None (and `line` is remembered)."""
        # Python's bytes hash is 64-bit SipHash (keyed per process): good enough here, and C-fast.
        # |1 keeps 0 free to mean "empty slot".
        key = (hash(data) & 0xFFFFFFFFFFFFFFFF) | 1
        keys, mask = self._keys, self._mask
        i = (key >> 1) & mask
        while True:
            k = keys[i]
            if k == 0:
                if self.size < self._limit:
                    keys[i] = key
                    self._lines[i] = min(line, 0xFFFFFFFF)
                    self.size += 1
                else:
                    self.full = True
                return None
            if k == key:
                return self._lines[i]
            i = (i + 1) & mask

    def close(self) -> None:
        for view in (self._keys, self._lines, self._view):
            view.release()
        self._map.close()
