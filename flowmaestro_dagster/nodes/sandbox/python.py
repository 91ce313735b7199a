"""Python snippets in a separate, locked-down process (the child is `python_child.py`).

The worker never runs snippet code itself. Each run gets a fresh temporary directory with a
`scratch/` working directory (the only writable place), stdout/stderr files and a result file;
the child starts in a new session (its own process group) with an almost empty environment.
The parent waits for the child's exit (through a pidfd, without reaping it), then kills the
whole process group, so nothing the snippet started can outlive it, and removes the directory.
"""

import contextlib
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowmaestro_dagster.nodes.sandbox import SnippetError, SnippetInputs, SnippetResult, truncate

CHILD_SOURCE = (Path(__file__).with_name("python_child.py")).read_text(encoding="utf-8")
STARTUP_GRACE_S = 1.0  # interpreter start-up, on top of the snippet's own time limit


@dataclass(frozen=True)
class PythonLimits:
    timeout_s: float
    memory_mb: int
    max_file_bytes: int = 16 * 1024 * 1024
    max_files: int = 64
    max_open_files: int = 64
    max_output_chars: int = 100_000
    require_isolation: bool = False


def run_python(
    code: str,
    inputs: SnippetInputs,
    limits: PythonLimits,
    *,
    scratch_root: str | None = None,
    executable: str | None = None,
) -> SnippetResult:
    """Run a snippet in a child interpreter; failures come back in `SnippetResult.error`."""
    work = tempfile.mkdtemp(prefix="flowmaestro-py-", dir=scratch_root)
    try:
        return _run(code, inputs, limits, Path(work), executable or sys.executable)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(
    code: str, inputs: SnippetInputs, limits: PythonLimits, work: Path, executable: str
) -> SnippetResult:
    scratch = work / "scratch"
    scratch.mkdir(mode=0o700)
    data = json.dumps(
        {
            "inputs": inputs.names,
            "shared": inputs.shared,
            "globals": {name: inputs.names[name] for name in inputs.globals},
        },
        default=str,
    )
    with (
        open(work / "stdout", "w+b") as stdout,
        open(work / "stderr", "w+b") as stderr,
        open(work / "result", "w+b") as result,
    ):
        request = {
            "code": code,
            "data": data,
            "scratch": str(scratch),
            "result_fd": result.fileno(),
            "cpu_seconds": math.ceil(limits.timeout_s),
            "memory_bytes": limits.memory_mb * 1024 * 1024,
            "max_file_bytes": limits.max_file_bytes,
            "max_files": limits.max_files,
            "max_open_files": limits.max_open_files,
            "require_isolation": limits.require_isolation,
        }
        started = time.monotonic()
        process = subprocess.Popen(
            [executable, "-I", "-S", "-B", "-u", "-X", "utf8", "-c", CHILD_SOURCE],
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=stderr,
            pass_fds=(result.fileno(),),
            cwd=scratch,
            env={"PATH": "/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(scratch)},
            start_new_session=True,
        )
        timed_out = _feed_and_wait(
            process, json.dumps(request).encode(), limits.timeout_s + STARTUP_GRACE_S
        )
        duration_ms = (time.monotonic() - started) * 1000
        out_text, out_cut = _read(stdout, limits.max_output_chars)
        err_text, err_cut = _read(stderr, limits.max_output_chars)
        result.seek(0)
        raw = result.read()
    envelope = _parse(raw)
    isolation = envelope.get("isolation", {}) if envelope else {}
    error = _error(envelope, process.returncode, timed_out, limits, err_text)
    return SnippetResult(
        output=envelope.get("output") if envelope and error is None else None,
        stdout=out_text,
        stderr=err_text,
        error=error,
        duration_ms=round(duration_ms, 1),
        truncated=out_cut or err_cut,
        isolation=isolation,
    )


def _feed_and_wait(process: subprocess.Popen[bytes], request: bytes, wall_s: float) -> bool:
    """Send the request, wait for the child's exit or the deadline; kill its whole group."""
    deadline = time.monotonic() + wall_s
    pidfd: int | None = None
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        pidfd = None
    timed_out = False
    try:
        assert process.stdin is not None
        try:
            process.stdin.write(request)
            process.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # the child died before reading: its exit status tells why
        remaining = max(deadline - time.monotonic(), 0.0)
        if pidfd is not None:
            # Readable when the child has exited; it stays a zombie (its pid and process
            # group id reserved) until we reap it below, after killing the group.
            ready, _, _ = select.select([pidfd], [], [], remaining)
            timed_out = not ready
        else:
            try:
                process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        _kill_group(process.pid)
        process.wait()
        if pidfd is not None:
            os.close(pidfd)
    return timed_out


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _read(file: Any, limit: int) -> tuple[str, bool]:
    file.seek(0)
    raw = file.read(limit * 4 + 4)
    text = raw.decode("utf-8", errors="replace")
    cut = len(raw) > limit * 4 or len(text) > limit
    text, cut_chars = truncate(text, limit)
    return text, cut or cut_chars


def _parse(raw: bytes) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw, parse_constant=lambda _: None)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _error(
    envelope: dict[str, Any] | None,
    returncode: int,
    timed_out: bool,
    limits: PythonLimits,
    stderr: str,
) -> SnippetError | None:
    limit_ms = round(limits.timeout_s * 1000)
    if timed_out:
        return SnippetError("timeout", f"the Python snippet timed out after {limit_ms} ms")
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL) and not (envelope and envelope.get("ok")):
        return SnippetError(
            "timeout", f"the Python snippet exceeded its CPU time limit ({limit_ms} ms)"
        )
    if envelope is None:
        if returncode < 0:
            name = signal.Signals(-returncode).name
            what = f"was killed by {name}"
        else:
            what = f"exited with status {returncode}"
        tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        detail = f": {tail[0]}" if tail else ""
        return SnippetError("crash", f"the Python sandbox process {what} without a result{detail}")
    if envelope.get("ok"):
        return None
    error = envelope.get("error") or {}
    kind = str(error.get("type") or "Error")
    message = str(error.get("message") or "")
    if kind == "MemoryError":
        return SnippetError(
            "memory",
            f"the Python snippet exceeded its memory limit ({limits.memory_mb} MB)",
            type=kind,
            line=error.get("line"),
            traceback=error.get("traceback"),
        )
    if kind == "SandboxUnavailable":
        return SnippetError("unavailable", message, type=kind)
    if kind == "ResultError":
        return SnippetError("result", message, type=kind)
    text = f"{kind}: {message}" if message else kind
    return SnippetError(
        "syntax" if kind in ("SyntaxError", "IndentationError", "TabError") else "exception",
        text,
        type=kind,
        line=error.get("line"),
        traceback=error.get("traceback"),
    )


__all__ = ["PythonLimits", "run_python"]
