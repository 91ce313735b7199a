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

`run_child` is that launcher without the Python snippet's request: the JavaScript code sandbox
(`javascript.py`) starts its own child program through it, inside the same layers.
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


@dataclass(frozen=True)
class ChildRun:
    """What a sandboxed child left behind: its result (None: none, or not JSON), its output
    files, how it ended (a death by signal N as -N) and whether the deadline ended it."""

    envelope: dict[str, Any] | None
    stdout: str
    stderr: str
    truncated: bool
    returncode: int
    timed_out: bool
    duration_ms: float


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
    data = json.dumps(
        {
            "inputs": inputs.names,
            "shared": inputs.shared,
            "globals": {name: inputs.names[name] for name in inputs.globals},
        },
        default=str,
    )
    request = {
        "code": code,
        "data": data,
        "cpu_seconds": math.ceil(limits.timeout_s),
        "memory_bytes": limits.memory_mb * 1024 * 1024,
        "max_file_bytes": limits.max_file_bytes,
        "max_files": limits.max_files,
        "max_open_files": limits.max_open_files,
        "max_processes": limits.max_processes,
    }
    run = run_child(
        CHILD_SOURCE,
        request,
        isolation=limits.isolation,
        bwrap=limits.bwrap,
        uid_base=limits.uid_base,
        wall_s=limits.timeout_s + STARTUP_GRACE_S,
        max_output_chars=limits.max_output_chars,
        scratch_root=scratch_root,
        executable=executable,
    )
    envelope = run.envelope
    error = _error(envelope, run.returncode, run.timed_out, limits, run.stderr)
    return SnippetResult(
        output=envelope.get("output") if envelope and error is None else None,
        stdout=run.stdout,
        stderr=run.stderr,
        error=error,
        duration_ms=run.duration_ms,
        truncated=run.truncated,
        isolation=envelope.get("isolation", {}) if envelope else {},
    )


def warn_unisolated() -> None:
    """Log, once per process, that code snippets run without kernel isolation."""
    if "none" in _warned:
        return
    _warned.add("none")
    _log.warning(
        "FLOWMAESTRO_PYTHON_ISOLATION=none: Python and JavaScript code nodes run without kernel "
        "isolation (resource limits, a process group and, for Python, an audit hook only): a "
        "snippet that escapes its interpreter can read every file and reach every address the "
        "worker can, and outlive its node (docs/sandbox.md)"
    )


def bubblewrap_status(command: str = "bwrap", executable: str | None = None) -> str | None:
    """Why bubblewrap cannot sandbox `executable` here (None: it can)."""
    return _bubblewrap(command, os.path.realpath(executable or sys.executable))[1]


def run_child(
    source: str,
    request: dict[str, Any],
    *,
    isolation: IsolationMode,
    bwrap: str,
    uid_base: int,
    wall_s: float,
    max_output_chars: int,
    read_only: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    scratch_root: str | None = None,
    executable: str | None = None,
) -> ChildRun:
    """Run `source` (a program for `python -I -S`, e.g. `python_child.py`) in the sandbox.

    It gets `request` on stdin, with `scratch`, `result_fd`, `info_fd`, `isolation`, `layers`,
    `uid` and `bubblewrap_error` added; under bubblewrap, the host paths `read_only` are
    mirrored read-only besides the interpreter's own files. Its environment is the sandbox's
    own (`PATH`, `HOME`, `TMPDIR`, `MALLOC_ARENA_MAX`) plus `env`. After `wall_s` the sandbox
    is killed whole. Each run has its own temporary directory, removed afterwards.
    """
    work = tempfile.mkdtemp(prefix="flowmaestro-py-", dir=scratch_root)
    try:
        return _run(
            source,
            request,
            isolation,
            bwrap,
            uid_base,
            wall_s,
            max_output_chars,
            read_only,
            env or {},
            Path(work),
            executable or sys.executable,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(
    source: str,
    request: dict[str, Any],
    isolation: IsolationMode,
    bwrap: str,
    uid_base: int,
    wall_s: float,
    max_output_chars: int,
    read_only: tuple[str, ...],
    env: dict[str, str],
    work: Path,
    executable: str,
) -> ChildRun:
    scratch = work / "scratch"
    scratch.mkdir(mode=0o700)
    info_read, info_write = os.pipe() if isolation != "none" else (None, None)
    with (
        open(work / "stdout", "w+b") as stdout,
        open(work / "stderr", "w+b") as stderr,
        open(work / "result", "w+b") as result,
    ):
        try:
            launch = _launch(
                isolation, bwrap, executable, str(scratch), info_write, source, read_only, env
            )
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
            uid = uid_base + process.pid
            try:
                os.chown(scratch, uid, uid)
            except OSError:
                _kill_group(process.pid)
                process.wait()
                if info_read is not None:
                    os.close(info_read)
                raise
        request = {
            **request,
            "scratch": launch.scratch,
            "result_fd": result.fileno(),
            "info_fd": launch.info_fd,
            "isolation": isolation,
            "layers": launch.layers,
            "uid": uid,
            "bubblewrap_error": launch.bubblewrap_error,
        }
        timed_out = _feed_and_wait(process, json.dumps(request).encode(), wall_s, info_read)
        duration_ms = (time.monotonic() - started) * 1000
        out_text, out_cut = _read(stdout, max_output_chars)
        err_text, err_cut = _read(stderr, max_output_chars)
        result.seek(0)
        raw = result.read()
    returncode = process.returncode
    if returncode > 128 and isolation != "none":
        returncode = 128 - returncode  # pid 1's death by signal N, relayed as 128 + N
    return ChildRun(
        envelope=_parse(raw),
        stdout=out_text,
        stderr=err_text,
        truncated=out_cut or err_cut,
        returncode=returncode,
        timed_out=timed_out,
        duration_ms=round(duration_ms, 1),
    )


def _launch(
    isolation: IsolationMode,
    bwrap_command: str,
    executable: str,
    scratch: str,
    info_fd: int | None,
    source: str,
    read_only: tuple[str, ...],
    extra_env: dict[str, str],
) -> _Launch:
    """The command line: bubblewrap around the child when mode `auto` has it, else the child."""
    child = ["-I", "-S", "-B", "-u", "-X", "utf8", "-c", source]
    # One malloc arena: glibc reserves 64 MB of address space per thread arena otherwise, and
    # RLIMIT_AS would count those reservations against the snippet's memory.
    env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "MALLOC_ARENA_MAX": "1"}
    env.update(extra_env)
    if isolation == "none":
        return _Launch([executable, *child], scratch, scratch, env, [])
    real = os.path.realpath(executable)
    bwrap, why = _bubblewrap(bwrap_command, real)
    if bwrap is None:
        assert info_fd is not None
        # The child makes its own namespaces and reports its pid 1 on the info pipe.
        launch = _Launch([executable, *child], scratch, scratch, env, [info_fd], info_fd=info_fd)
        launch.bubblewrap_error = why
        return launch
    assert info_fd is not None
    layout = _layout(real)
    argv = _bwrap_argv(bwrap, layout, scratch, info_fd, read_only, extra_env)
    argv += [layout.executable, *child]
    layers = {
        "bubblewrap": True,
        "mount_namespace": True,
        "pid_namespace": True,
        "network_namespace": True,
        "user_namespace": os.geteuid() != 0,
    }
    return _Launch(argv, SCRATCH, "/", {}, [info_fd], layers)


def _bwrap_argv(
    bwrap: str,
    layout: _Layout,
    scratch: str,
    info_fd: int | None,
    read_only: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> list[str]:
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
        # keeps only what it needs to empty its bounding set (bubblewrap leaves the host's) and
        # switch to the run's own uid, then has no capability.
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        argv += ["--cap-add", "CAP_SETPCAP"]
    else:
        argv += ["--unshare-user", "--disable-userns"]
    argv += _filesystem(layout, read_only)
    argv += ["--bind", scratch, SCRATCH, "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/"]
    argv += ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin"]
    argv += ["--setenv", "HOME", SCRATCH, "--setenv", "TMPDIR", SCRATCH]
    argv += ["--setenv", "MALLOC_ARENA_MAX", "1"]
    for name, value in (env or {}).items():
        argv += ["--setenv", name, value]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    return [*argv, "--"]


def _filesystem(layout: _Layout, read_only: tuple[str, ...] = ()) -> list[str]:
    """bubblewrap arguments for a read-only view of the interpreter, its standard library, the
    shared libraries and time zones, each at its host path; site-packages hidden; then the
    `read_only` paths (files or directories) the child also needs, at their host paths."""
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
    hidden = {site for site in layout.site if inside(site, binds) and os.path.isdir(site)}
    for site in sorted(hidden):
        argv += ["--tmpfs", site]
    made = dirs | hidden  # directories made so far; besides them, the mirrored trees exist

    def present(path: str) -> bool:
        under_hidden = any(path == site or inside(path, {site}) for site in hidden)
        return path in made or ((path in binds or inside(path, binds)) and not under_hidden)

    for path in sorted(set(read_only), key=lambda p: (p.count("/"), p)):
        missing = []
        parent = os.path.dirname(path)
        while parent not in ("/", "") and not present(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(missing):
            argv += ["--perms", "0755", "--dir", directory]
            made.add(directory)
        argv += ["--ro-bind", os.path.realpath(path), path]
        if os.path.isdir(path):
            made.add(path)
    for site in sorted(hidden):
        argv += ["--remount-ro", site]
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


def no_result_error(language: str, returncode: int, stderr: str) -> SnippetError:
    """Why a sandbox process ended without a result: bubblewrap failed, or how it died."""
    tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
    if tail and tail[0].startswith("bwrap:"):
        return SnippetError(
            "unavailable",
            f"bubblewrap could not start the {language} sandbox ({tail[0]}); see "
            "FLOWMAESTRO_PYTHON_ISOLATION in docs/sandbox.md",
        )
    if returncode < 0:
        try:
            what = f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            what = f"was killed by signal {-returncode}"
    else:
        what = f"exited with status {returncode}"
    detail = f": {tail[0]}" if tail else ""
    return SnippetError("crash", f"the {language} sandbox process {what} without a result{detail}")


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
        return no_result_error("Python", returncode, stderr)
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
    "ChildRun",
    "IsolationMode",
    "PythonLimits",
    "bubblewrap_status",
    "no_result_error",
    "run_child",
    "run_python",
    "warn_unisolated",
]
