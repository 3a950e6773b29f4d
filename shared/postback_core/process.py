"""Process names: worker processes show up in ps/top under their service's name.

Workers are started with multiprocessing's spawn method, so the kernel knows
them as ``python3``; operators (and the benchmarks' CPU accounts) look for the
service's name instead.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

COMM_MAX_LENGTH = 15  # TASK_COMM_LEN - 1


def name_this_process(name: str) -> None:
    """Set the process name the kernel reports (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name[:COMM_MAX_LENGTH])
