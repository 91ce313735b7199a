"""Python snippets in a child process, inside every isolation layer the host gives (the child is
`python_child.py`; the layers and what each one holds are in docs/sandbox.md).

The worker never runs snippet code itself. Each run gets a fresh temporary directory with a
`scratch/` working directory (the only writable place), stdout/stderr files and a result file.
In mode `auto` (`FLOWMAESTRO_PYTHON_ISOLATION`, the default) the child runs under bubblewrap
when the host has it: new mount, PID, network, IPC and UTS namespaces, a read-only view of the
standard library and the system libraries and nothing else of the host's files, an empty
environment, the interpreter as pid 1 (when it dies, the kernel kills everything left in the
namespace, `setsid` or not). As root, the child switches to a uid of its own for the run, so
RLIMIT_NPROC limits this run alone (as non-root, bubblewrap's user namespace does that).
Without bubblewrap the child makes its own namespaces and relies on Landlock for files. A
snippet is refused where a barrier is missing; mode `none` runs it with resource limits, a
process group and the audit hook only, and logs a warning.

The parent waits for the sandbox's exit or the deadline, kills its pid 1 and waits until the
kernel has emptied the namespace, kills the process group, and removes the directory.
"""

import contextlib
import functools
import json
import logging
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flowmaestro_dagster.nodes.sandbox import SnippetError, SnippetInputs, SnippetResult, truncate

CHILD_SOURCE = (Path(__file__).with_name("python_child.py")).read_text(encoding="utf-8")
STARTUP_GRACE_S = 1.0  # interpreter start-up, on top of the snippet's own time limit
KILL_WAIT_S = 5.0  # how long to wait for the kernel to empty a killed sandbox
SCRATCH = "/scratch"  # where the scratch directory appears inside bubblewrap
DEFAULT_UID_BASE = 0x70000000
IsolationMode = Literal["auto", "none"]
# Host directories of shared libraries, mirrored read-only (or as the symlinks they are).
SYSTEM_LIBRARY_DIRS = (
    "/lib",
    "/lib64",
    "/lib32",
    "/libx32",
    "/usr/lib",
    "/usr/lib64",
    "/usr/lib32",
    "/usr/libx32",
)
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
SYSTEM_DATA_DIRS = ("/usr/share/zoneinfo",)
_LAYOUT_PROBE = """
import json, os, sys, sysconfig
shared = sysconfig.get_config_var("Py_ENABLE_SHARED")
lib = sysconfig.get_config_var("INSTSONAME") if shared else None
libdir = sysconfig.get_config_var("LIBDIR") or ""
print(json.dumps({
    "executable": os.path.realpath(sys.executable),
    "path": [os.path.realpath(p) for p in sys.path if p and os.path.exists(p)],
    "libpython": os.path.realpath(os.path.join(libdir, lib)) if lib and libdir else None,
    "site": [os.path.realpath(sysconfig.get_path(name)) for name in ("purelib", "platlib")],
}))
"""
_log = logging.getLogger("flowmaestro.sandbox")
_warned: set[str] = set()


@dataclass(frozen=True)
class PythonLimits:
    timeout_s: float
    memory_mb: int
    max_file_bytes: int = 16 * 1024 * 1024
    max_files: int = 64
    max_open_files: int = 64
    max_output_chars: int = 100_000
    max_processes: int = 16
    isolation: IsolationMode = "auto"
    bwrap: str = "bwrap"  # the bubblewrap command or path; empty: never use it
    uid_base: int = DEFAULT_UID_BASE  # as root, a run's uid is this plus its sandbox's pid


@dataclass(frozen=True)
class _Layout:
    """What the interpreter needs to start: its binary, its sys.path, libpython."""

    executable: str
    path: tuple[str, ...]
    libpython: str | None
    site: tuple[str, ...]


@dataclass
class _Launch:
    argv: list[str]
    scratch: str  # the scratch directory as the child sees it
    cwd: str
    env: dict[str, str]
    pass_fds: list[int]
    layers: dict[str, bool] = field(default_factory=dict)
    info_fd: int | None = None  # the child's end of the info pipe, when the child gets it
    bubblewrap_error: str | None = None


def run_python(
    code: str,
    inputs: SnippetInputs,
    limits: PythonLimits,
    *,
    scratch_root: str | None = None,
    executable: str | None = None,
) -> SnippetResult:
    """Run a snippet in a child interpreter; failures come back in `SnippetResult.error`."""
    if limits.isolation == "none":
        warn_unisolated()
    work = tempfile.mkdtemp(prefix="flowmaestro-py-", dir=scratch_root)
    try:
        return _run(code, inputs, limits, Path(work), executable or sys.executable)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def warn_unisolated() -> None:
    """Log, once per process, that Python snippets run without kernel isolation."""
    if "none" in _warned:
        return
    _warned.add("none")
    _log.warning(
        "FLOWMAESTRO_PYTHON_ISOLATION=none: Python code nodes run without kernel isolation "
        "(resource limits, a process group and an audit hook only): a snippet can read every "
        "file and reach every address the worker can, and outlive its node (docs/sandbox.md)"
    )


def bubblewrap_status(command: str = "bwrap", executable: str | None = None) -> str | None:
    """Why bubblewrap cannot sandbox `executable` here (None: it can)."""
    return _bubblewrap(command, os.path.realpath(executable or sys.executable))[1]


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
    info_read, info_write = os.pipe() if limits.isolation != "none" else (None, None)
    with (
        open(work / "stdout", "w+b") as stdout,
        open(work / "stderr", "w+b") as stderr,
        open(work / "result", "w+b") as result,
    ):
        try:
            launch = _launch(limits, executable, str(scratch), info_write)
            started = time.monotonic()
            process = subprocess.Popen(
                launch.argv,
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
                pass_fds=(result.fileno(), *launch.pass_fds),
                cwd=launch.cwd,
                env=launch.env,
                start_new_session=True,
            )
        except BaseException:
            if info_read is not None:
                os.close(info_read)
            raise
        finally:
            if info_write is not None:
                os.close(info_write)
        uid = None
        if launch.layers.get("bubblewrap") and os.geteuid() == 0:
            # A uid of its own: RLIMIT_NPROC counts this run alone, and the host's root-only
            # files stay closed to it even where a view of them leaked into the sandbox.
            uid = limits.uid_base + process.pid
            try:
                os.chown(scratch, uid, uid)
            except OSError:
                _kill_group(process.pid)
                process.wait()
                if info_read is not None:
                    os.close(info_read)
                raise
        request = {
            "code": code,
            "data": data,
            "scratch": launch.scratch,
            "result_fd": result.fileno(),
            "info_fd": launch.info_fd,
            "cpu_seconds": math.ceil(limits.timeout_s),
            "memory_bytes": limits.memory_mb * 1024 * 1024,
            "max_file_bytes": limits.max_file_bytes,
            "max_files": limits.max_files,
            "max_open_files": limits.max_open_files,
            "max_processes": limits.max_processes,
            "isolation": limits.isolation,
            "layers": launch.layers,
            "uid": uid,
            "bubblewrap_error": launch.bubblewrap_error,
        }
        timed_out = _feed_and_wait(
            process, json.dumps(request).encode(), limits.timeout_s + STARTUP_GRACE_S, info_read
        )
        duration_ms = (time.monotonic() - started) * 1000
        out_text, out_cut = _read(stdout, limits.max_output_chars)
        err_text, err_cut = _read(stderr, limits.max_output_chars)
        result.seek(0)
        raw = result.read()
    envelope = _parse(raw)
    isolation = envelope.get("isolation", {}) if envelope else {}
    returncode = process.returncode
    if returncode > 128 and limits.isolation != "none":
        returncode = 128 - returncode  # pid 1's death by signal N, relayed as 128 + N
    error = _error(envelope, returncode, timed_out, limits, err_text)
    return SnippetResult(
        output=envelope.get("output") if envelope and error is None else None,
        stdout=out_text,
        stderr=err_text,
        error=error,
        duration_ms=round(duration_ms, 1),
        truncated=out_cut or err_cut,
        isolation=isolation,
    )


def _launch(limits: PythonLimits, executable: str, scratch: str, info_fd: int | None) -> _Launch:
    """The command line: bubblewrap around the child when mode `auto` has it, else the child."""
    child = ["-I", "-S", "-B", "-u", "-X", "utf8", "-c", CHILD_SOURCE]
    # One malloc arena: glibc reserves 64 MB of address space per thread arena otherwise, and
    # RLIMIT_AS would count those reservations against the snippet's memory.
    env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "MALLOC_ARENA_MAX": "1"}
    if limits.isolation == "none":
        return _Launch([executable, *child], scratch, scratch, env, [])
    real = os.path.realpath(executable)
    bwrap, why = _bubblewrap(limits.bwrap, real)
    if bwrap is None:
        assert info_fd is not None
        # The child makes its own namespaces and reports its pid 1 on the info pipe.
        launch = _Launch([executable, *child], scratch, scratch, env, [info_fd], info_fd=info_fd)
        launch.bubblewrap_error = why
        return launch
    assert info_fd is not None
    layout = _layout(real)
    argv = [*_bwrap_argv(bwrap, layout, scratch, info_fd), layout.executable, *child]
    layers = {
        "bubblewrap": True,
        "mount_namespace": True,
        "pid_namespace": True,
        "network_namespace": True,
        "user_namespace": os.geteuid() != 0,
    }
    return _Launch(argv, SCRATCH, "/", {}, [info_fd], layers)


def _bwrap_argv(bwrap: str, layout: _Layout, scratch: str, info_fd: int | None) -> list[str]:
    argv = [
        bwrap,
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",  # the child is pid 1: its exit empties the namespace at once
    ]
    if os.geteuid() == 0:
        # No user namespace (it would map to uid 0, which RLIMIT_NPROC ignores): the child
        # keeps only what it needs to switch to the run's own uid, then has no capability.
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user", "--disable-userns"]
    argv += _filesystem(layout)
    argv += ["--bind", scratch, SCRATCH, "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/"]
    argv += ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin"]
    argv += ["--setenv", "HOME", SCRATCH, "--setenv", "TMPDIR", SCRATCH]
    argv += ["--setenv", "MALLOC_ARENA_MAX", "1"]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    return [*argv, "--"]


def _filesystem(layout: _Layout) -> list[str]:
    """bubblewrap arguments for a read-only view of the interpreter, its standard library, the
    shared libraries and time zones, each at its host path; site-packages hidden."""
    binds = {layout.executable, *layout.path}
    if layout.libpython and os.path.exists(layout.libpython):
        binds.add(layout.libpython)
    symlinks = []
    for path in SYSTEM_LIBRARY_DIRS:
        if os.path.islink(path):
            symlinks.append((os.readlink(path), path))
        elif os.path.isdir(path):
            binds.add(path)
    binds.update(p for p in SYSTEM_FILES + SYSTEM_DATA_DIRS if os.path.exists(p))

    def inside(path: str, roots: set[str]) -> bool:
        return any(path.startswith(root.rstrip("/") + "/") for root in roots)

    dirs: set[str] = set()
    for path in binds:
        parent = os.path.dirname(path)
        while parent not in ("/", "") and parent not in binds and not inside(parent, binds):
            dirs.add(parent)
            parent = os.path.dirname(parent)
    argv: list[str] = []
    for path in sorted(dirs, key=lambda p: p.count("/")):
        argv += ["--perms", "0755", "--dir", path]  # bubblewrap would make them 0700
    for path in sorted(binds, key=lambda p: (p.count("/"), p)):
        argv += ["--ro-bind", os.path.realpath(path), path]
    for site in layout.site:
        if inside(site, binds) and os.path.isdir(site):
            argv += ["--tmpfs", site, "--remount-ro", site]
    for target, path in symlinks:
        argv += ["--symlink", target, path]
    return argv


@functools.lru_cache(maxsize=8)
def _layout(executable: str) -> _Layout:
    done = subprocess.run(
        [executable, "-I", "-S", "-c", _LAYOUT_PROBE],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={},
    )
    found = json.loads(done.stdout)
    return _Layout(
        executable=found["executable"],
        path=tuple(found["path"]),
        libpython=found["libpython"],
        site=tuple(found["site"]),
    )


@functools.lru_cache(maxsize=8)
def _bubblewrap(command: str, executable: str) -> tuple[str | None, str | None]:
    """The bubblewrap binary that sandboxes `executable` here (once per process), or why not."""
    if not command:
        return None, "bubblewrap is switched off (FLOWMAESTRO_CODE__PYTHON_BWRAP is empty)"
    path = shutil.which(command)
    if path is None:
        return None, f"bubblewrap ('{command}') is not installed"
    try:
        layout = _layout(executable)
        with tempfile.TemporaryDirectory(prefix="flowmaestro-bwrap-probe-") as scratch:
            argv = _bwrap_argv(path, layout, scratch, None)
            done = subprocess.run(
                [*argv, layout.executable, "-I", "-S", "-c", "pass"],
                check=False,
                capture_output=True,
                text=True,
                timeout=30,
                env={},
                cwd="/",
            )
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return None, f"bubblewrap cannot start a sandbox here: {exc}"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        return None, f"bubblewrap cannot start a sandbox here: {lines[-1]}"
    return path, None


def _feed_and_wait(
    process: subprocess.Popen[bytes], request: bytes, wall_s: float, info: int | None
) -> bool:
    """Send the request and wait for the child's exit or the deadline; then kill the sandbox's
    pid 1 (reported on `info`) and wait until the kernel has emptied its PID namespace, and
    kill the process group."""
    deadline = time.monotonic() + wall_s
    pidfd: int | None = None
    init: int | None = None  # a pidfd of the sandbox's pid 1
    report = b""
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
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if pidfd is None:
                try:
                    process.wait(timeout=remaining)
                except subprocess.TimeoutExpired:
                    timed_out = True
                break
            # The pidfd is readable when the child has exited; it stays a zombie (its pid and
            # process group id reserved) until we reap it below, after killing the group.
            watched = [pidfd] if info is None else [pidfd, info]
            ready, _, _ = select.select(watched, [], [], remaining)
            if info is not None and info in ready:
                chunk = os.read(info, 4096)
                report += chunk
                if init is None:
                    init = _open_init(report)
                if not chunk:
                    os.close(info)
                    info = None
            if pidfd in ready:
                break
    finally:
        if init is None and info is not None:
            with contextlib.suppress(OSError):
                report += os.read(info, 4096) if select.select([info], [], [], 0)[0] else b""
            init = _open_init(report)
        if init is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(init, signal.SIGKILL)
            select.select([init], [], [], KILL_WAIT_S)  # readable once the namespace is empty
            os.close(init)
            if pidfd is not None:  # bubblewrap (or the relay) reaps pid 1, then exits
                select.select([pidfd], [], [], KILL_WAIT_S)
        if info is not None:
            os.close(info)
        _kill_group(process.pid)
        process.wait()
        if pidfd is not None:
            os.close(pidfd)
    return timed_out


def _open_init(report: bytes) -> int | None:
    """A pidfd of the pid 1 in a bubblewrap `--info-fd` (or child) report, once it is whole."""
    try:
        pid = int(json.loads(report)["child-pid"])
        return os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, OSError):
        return None


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
        tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        if tail and tail[0].startswith("bwrap:"):
            return SnippetError(
                "unavailable",
                f"bubblewrap could not start the Python sandbox ({tail[0]}); see "
                "FLOWMAESTRO_PYTHON_ISOLATION in docs/sandbox.md",
            )
        if returncode < 0:
            name = signal.Signals(-returncode).name
            what = f"was killed by {name}"
        else:
            what = f"exited with status {returncode}"
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


__all__ = [
    "IsolationMode",
    "PythonLimits",
    "bubblewrap_status",
    "run_python",
    "warn_unisolated",
]
