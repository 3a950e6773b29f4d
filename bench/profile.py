"""Optional sampling profiles of the services under load (``--profile`` / BENCH_PROFILE=1).

py-spy attaches to the running gateway or dispatcher for as long as it serves the
benchmark and writes collapsed stacks to bench/results/profiles/<name>.txt; the
summary lists where the samples were (self time per function, and the inclusive
share of the frames that belong to our packages or their main libraries).
py-spy is a developer tool, not a dependency: ``.venv/bin/pip install py-spy``.

    python -m bench.profile bench/results/profiles/p4-gateway.txt
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from bench.common import BIN, ROOT, Proc, say

PROFILE_DIR = ROOT / "bench" / "results" / "profiles"


def enabled() -> bool:
    return os.environ.get("BENCH_PROFILE", "") not in ("", "0", "false")


def _py_spy() -> str | None:
    candidate = BIN / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


@asynccontextmanager
async def profiled(proc: Proc) -> AsyncIterator[None]:
    exe = _py_spy() if enabled() else None
    if exe is None:
        yield
        return
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    out = PROFILE_DIR / f"{proc.name}.txt"
    spy = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(proc.pid),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            spy.send_signal(signal.SIGINT)
        try:
            spy.wait(20)
        except subprocess.TimeoutExpired:
            spy.kill()
        if out.exists():
            say(f"profile of {proc.name}: {out}")


def summarize(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares from a py-spy raw (collapsed) file."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        # py-spy frames look like "function (path/file.py:line)"; fold lines per function.
        names = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") else f for f in frames]
        self_counts[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples", "", "self time:"]
    for name, count in self_counts.most_common(top):
        lines.append(f"  {100 * count / total:5.1f}%  {name}")
    lines += ["", "inclusive (our code and main libraries):"]
    keep = (
        "click_gateway",
        "postback_dispatcher",
        "postback_core",
        "sqlalchemy",
        "asyncpg",
        "aio_pika",
        "aiormq",
        "aiohttp",
        "fastapi",
        "starlette",
        "pydantic",
        "uvicorn",
    )
    shown = 0
    for name, count in inclusive.most_common():
        if any(k in name for k in keep):
            lines.append(f"  {100 * count / total:5.1f}%  {name}")
            shown += 1
            if shown >= top * 2:
                break
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"== {arg}")
        print(summarize(Path(arg)))
