"""The multiprocess metrics directory, set up by a serving command before its workers start.

Kept apart from ``postback_core.metrics``: prometheus-client picks its storage
(in memory or the shared files) when it is first imported, so this must run,
and set ``PROMETHEUS_MULTIPROC_DIR``, before anything imports it in a process
that records metrics.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_DIR_PATTERN = re.compile(r"^(?P<service>[a-z-]+)-(?P<pid>\d+)-")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_multiprocess_dir(service: str) -> Path:
    """Give this run's processes a private, empty metrics directory (call before spawning).

    The directory is removed at exit. Directories left by runs that ended by a
    signal (SIGKILL; uvicorn re-raises the SIGTERM it handled) are
    removed when their owner's pid is gone, or is ours (a restarted container
    whose serving process is pid 1 again).
    """
    base = Path(os.environ.get(MULTIPROC_ENV) or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    for entry in base.iterdir():
        match = _DIR_PATTERN.match(entry.name)
        owner = int(match["pid"]) if match else 0
        if match and entry.is_dir() and (owner == os.getpid() or not pid_alive(owner)):
            shutil.rmtree(entry, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{service}-{os.getpid()}-", dir=base))
    os.environ[MULTIPROC_ENV] = str(path)
    atexit.register(shutil.rmtree, path, True)
    return path
