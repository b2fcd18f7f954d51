"""Which process holds what: the one pid-alive check and the worker identity that job leases use.

A job is claimed by `host:pid:suffix`; a later process on the same host finds the holder gone
with `process_alive` and returns its jobs to the queue. The same check reads the agent's and the
sync service's pid files.
"""

from __future__ import annotations

import os
import socket

from edge.ids import uuid7


def process_alive(pid: int) -> bool:
    """True when a process with this pid exists (also one owned by another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user (the service's dynamic user)
    except OSError:
        return False
    return True


def this_host() -> str:
    return socket.gethostname()


def new_worker_id() -> str:
    """`host:pid:suffix`: the holder recorded on a claimed job (the suffix tells two pipelines of
    one process apart)."""
    return f"{this_host()}:{os.getpid()}:{uuid7()[-8:]}"
