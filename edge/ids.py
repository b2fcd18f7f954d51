"""Device-made identifiers.

UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then randomness. Ids made on the device sort by
creation time, so the store's primary-key indexes stay append-mostly and the hub can upsert by
id without ever asking the device for one. Python gains `uuid.uuid7` only in 3.14; JetPack 6
ships 3.10, hence these few lines.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> str:
    """A new time-ordered UUID as its canonical string.

    Within one millisecond a 12-bit counter (seeded randomly, RFC 9562 method 1) keeps ids
    from one process strictly increasing.
    """
    global _last_ms, _counter  # noqa: PLW0603 - module-level monotonic state by design
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= counter << 64
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand_b
    return str(uuid.UUID(int=value))
