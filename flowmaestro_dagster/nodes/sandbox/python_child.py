"""The child side of the Python code sandbox (standard library only).

`flowmaestro_dagster.nodes.sandbox.python` starts `python -I -S -u -X utf8 -c <this file's text>`
in its own session, with stdout/stderr redirected to files, one JSON request on stdin and a
result file descriptor. Before the snippet runs, this script closes every door it can, in this
order (each kernel layer is best effort and reported back; the audit hook is always there):

1. a new network namespace (`unshare(CLONE_NEWNET)`; as non-root with a user namespace): no
   interface but a down loopback, so no connection leaves the process;
2. Landlock (Linux >= 5.13): read-only access to the Python installation and system
   libraries, read-write to the scratch directory, nothing else; no TCP bind/connect (ABI 4);
   no signals to, or abstract sockets of, processes outside the sandbox (ABI 6); no execve;
3. `no_new_privs`, and as root every capability dropped (no mknod, mount, raw sockets, ...);
4. resource limits: CPU seconds, address space, file size, open files, no core dumps;
5. a `sys.addaudithook` hook that refuses sockets, processes, signals, ctypes and files outside
   the scratch directory (and reads outside the standard library) with a clear message.

Then the snippet runs; the outcome goes to the result descriptor as one JSON object.
"""

import _thread
import json
import os
import sys
from types import CodeType

# Modules a snippet may not import: the network, processes, foreign functions, interpreters.
BLOCKED_MODULES = frozenset(
    {
        "_ctypes",
        "_multiprocessing",
        "_posixshmem",
        "_posixsubprocess",
        "_socket",
        "_ssl",
        "_testcapi",
        "_testinternalcapi",
        "_xxsubinterpreters",
        "_xxinterpchannels",
        "ctypes",
        "multiprocessing",
        "socket",
        "ssl",
        "subprocess",
        "syslog",
    }
)
_PROCESS_EVENTS = frozenset(
    {
        "os.exec",
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.startfile",
        "os.system",
        "pty.spawn",
        "subprocess.Popen",
        "webbrowser.open",
    }
)
_SIGNAL_EVENTS = frozenset({"os.kill", "os.killpg", "signal.pthread_kill"})
# Events whose first argument is a path the snippet changes (scratch directory only).
_WRITE_PATH_EVENTS = frozenset(
    {
        "os.chmod",
        "os.chown",
        "os.mkdir",
        "os.remove",
        "os.removexattr",
        "os.rmdir",
        "os.setxattr",
        "os.truncate",
        "os.utime",
    }
)
_READ_PATH_EVENTS = frozenset({"os.listdir", "os.scandir", "os.listxattr", "os.getxattr"})

# Landlock (include/uapi/linux/landlock.h); the syscall numbers are the same on every arch.
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_MAKE_CHAR = 1 << 6
_FS_MAKE_SOCK = 1 << 9
_FS_MAKE_FIFO = 1 << 10
_FS_MAKE_BLOCK = 1 << 11
_FS_IOCTL_DEV = 1 << 15
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYSTEM_LIBRARY_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")


class Namespace(dict):
    """A dict whose keys also read as attributes, so `inputs.customer.name` works."""

    __slots__ = ()

    def __getattr__(self, name: str) -> object:
        try:
            return self[name]
        except KeyError:
            keys = ", ".join(sorted(str(k) for k in self))[:300]
            raise AttributeError(f"no key '{name}' (keys: {keys})") from None

    def __setattr__(self, name: str, value: object) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


# -- kernel layers -----------------------------------------------------------------------------


def _libc() -> object:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _unshare_network() -> bool:
    """A network namespace of our own: no route anywhere, not even to the host's loopback."""
    try:
        libc = _libc()
        if libc.unshare(_CLONE_NEWNET) == 0:  # type: ignore[attr-defined]
            return True
        if os.geteuid() != 0:
            return bool(libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0)  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        pass
    return False


def _landlock(read_dirs: list[str], read_files: list[str], write_dirs: list[str]) -> int:
    """Restrict the file system, TCP and signals with Landlock; returns the ABI used (0: none)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
        syscall.restype = ctypes.c_long
        abi = int(
            syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
        )
        if abi < 1:
            return 0
        handled_fs = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
        if abi >= 2:
            handled_fs |= 1 << 13  # REFER
        if abi >= 3:
            handled_fs |= 1 << 14  # TRUNCATE
        if abi >= 5:
            handled_fs |= _FS_IOCTL_DEV
        handled_net = 0b11 if abi >= 4 else 0  # BIND_TCP, CONNECT_TCP: no rule grants them
        scoped = 0b11 if abi >= 6 else 0  # ABSTRACT_UNIX_SOCKET, SIGNAL

        class RulesetAttr(ctypes.Structure):
            _fields_ = [
                ("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64),
            ]

        class PathBeneathAttr(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

        size = 8 if abi < 4 else 16 if abi < 6 else 24
        attr = RulesetAttr(handled_fs, handled_net, scoped)
        ruleset = int(
            syscall(
                _SYS_LANDLOCK_CREATE_RULESET,
                ctypes.byref(attr),
                ctypes.c_size_t(size),
                ctypes.c_uint32(0),
            )
        )
        if ruleset < 0:
            return 0
        writable = handled_fs & ~(
            _FS_EXECUTE
            | _FS_MAKE_CHAR
            | _FS_MAKE_BLOCK
            | _FS_MAKE_SOCK
            | _FS_MAKE_FIFO
            | _FS_IOCTL_DEV
        )
        rules = [(p, _FS_READ_FILE | _FS_READ_DIR) for p in read_dirs]
        rules += [(p, _FS_READ_FILE) for p in read_files]
        rules += [(p, writable) for p in write_dirs]
        try:
            for path, access in rules:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    rule = PathBeneathAttr(access, fd)
                    syscall(
                        _SYS_LANDLOCK_ADD_RULE,
                        ctypes.c_int(ruleset),
                        ctypes.c_int(1),
                        ctypes.byref(rule),
                        ctypes.c_uint32(0),
                    )
                finally:
                    os.close(fd)
            if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                return 0
            if syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
                return 0
        finally:
            os.close(ruleset)
        return abi
    except (OSError, AttributeError):
        return 0


def _drop_capabilities() -> bool:
    """Root keeps its uid (the Python installation may be readable by root only) but no power."""
    if os.geteuid() != 0:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        for cap in range(64):
            libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last capability

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [
                ("effective", ctypes.c_uint32),
                ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32),
            ]

        header = Header(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (Data * 2)()
        return bool(libc.capset(ctypes.byref(header), data) == 0)
    except (OSError, AttributeError):
        return False


def _set_limits(request: dict, status: int) -> None:
    """`status` is an open descriptor of /proc/self/status (opened before Landlock)."""
    import resource

    def limit(which: int, value: int, hard: int | None = None) -> None:
        _soft, current_hard = resource.getrlimit(which)
        wanted_hard = value if hard is None else hard
        if current_hard != resource.RLIM_INFINITY:
            value = min(value, current_hard)
            wanted_hard = min(wanted_hard, current_hard)
        resource.setrlimit(which, (value, wanted_hard))

    cpu = max(int(request["cpu_seconds"]), 1)
    limit(resource.RLIMIT_CPU, cpu, cpu + 1)
    limit(resource.RLIMIT_FSIZE, int(request["max_file_bytes"]))
    limit(resource.RLIMIT_NOFILE, int(request["max_open_files"]))
    limit(resource.RLIMIT_CORE, 0)
    # The address space the interpreter has now, plus what the snippet may allocate.
    limit(resource.RLIMIT_AS, _vm_size(status) + int(request["memory_bytes"]))


def _vm_size(status: int) -> int:
    text = os.pread(status, 8192, 0).decode("ascii", errors="replace")
    for line in text.splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


# -- the audit hook ------------------------------------------------------------------------------


def _install_audit_hook(scratch: str, read_roots: list[str], max_created_files: int) -> None:
    realpath = os.path.realpath
    fsdecode = os.fsdecode
    fspath = os.fspath
    exists = os.path.lexists
    sep = os.sep
    scratch_root = realpath(scratch)
    reads = tuple(realpath(p) for p in read_roots)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    state = {"created": 0}
    busy: set[int] = set()  # threads inside the hook (it must not judge its own events)
    get_ident = _thread.get_ident

    def inside(path: str, roots: tuple[str, ...]) -> bool:
        return any(path == root or path.startswith(root + sep) for root in roots)

    def resolve(path: object) -> str | None:
        if path is None:
            return realpath(".")
        if isinstance(path, int):
            return None  # an already open descriptor
        try:
            return realpath(fsdecode(fspath(path)))  # type: ignore[call-overload]
        except TypeError:
            return ""

    def deny(what: str, why: str = "") -> None:
        raise PermissionError(f"{what} is not permitted in the code sandbox{why}")

    def check_write(path: object, verb: str) -> None:
        resolved = resolve(path)
        if resolved is not None and not inside(resolved, (scratch_root,)):
            deny(f"{verb} '{path!s}'", " (only its scratch directory is writable)")

    def on_open(path: object, mode: object, flags: object) -> None:
        resolved = resolve(path)
        if resolved is None:
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and bool(flags & write_flags)
        )
        if inside(resolved, (scratch_root,)):
            if writing and not exists(resolved):
                state["created"] += 1
                if state["created"] > max_created_files:
                    deny(f"creating more than {max_created_files} files")
            return
        if not writing and inside(resolved, reads):
            return
        verb = "writing" if writing else "reading"
        deny(f"{verb} '{path!s}'", " (only files in its scratch directory are)")

    def hook(event: str, args: tuple) -> None:
        thread = get_ident()
        if thread in busy:
            return
        busy.add(thread)
        try:
            if event == "open":
                on_open(
                    args[0], args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else 0
                )
            elif event == "import":
                name = str(args[0])
                if name.split(".", maxsplit=1)[0] in BLOCKED_MODULES:
                    deny(f"importing '{name}'")
            elif event.startswith("socket."):
                deny("network access (socket)")
            elif event in _PROCESS_EVENTS:
                deny("starting a process")
            elif event in _SIGNAL_EVENTS:
                deny("sending signals")
            elif event.startswith(("ctypes.", "syslog.")):
                deny(f"'{event}'")
            elif event in ("os.link", "os.symlink"):
                deny("creating links")
            elif event == "os.rename":
                check_write(args[0], "renaming")
                check_write(args[1], "renaming to")
            elif event in _WRITE_PATH_EVENTS:
                check_write(args[0], "changing")
            elif event == "os.chdir":
                check_write(args[0], "changing directory to")
            elif event in _READ_PATH_EVENTS:
                resolved = resolve(args[0])
                if resolved is not None and not inside(resolved, (scratch_root, *reads)):
                    deny(f"listing '{args[0]!s}'")
            elif event == "sqlite3.connect":
                database = args[0]
                if fsdecode(fspath(database)) != ":memory:":
                    check_write(database, "opening the database")
            elif event in ("sqlite3.enable_load_extension", "sqlite3.load_extension"):
                deny("loading SQLite extensions")
        finally:
            busy.discard(thread)

    sys.addaudithook(hook)


# -- running the snippet ------------------------------------------------------------------------


_NO_RESULT = object()


def _compile(source: str) -> tuple[CodeType, bool]:
    """The code object and whether it is a function body (it uses a top-level `return`)."""
    import ast

    tree = ast.parse(source, filename="<snippet>", mode="exec")
    try:
        return compile(tree, "<snippet>", "exec"), False
    except SyntaxError as exc:
        if "'return' outside function" not in str(exc):
            raise
    last = max((getattr(n, "end_lineno", 0) or 0 for n in ast.walk(tree)), default=0)
    trailer = ast.parse("try:\n    return result\nexcept NameError:\n    return __no_result__\n")
    ast.increment_lineno(trailer, last)
    function = ast.FunctionDef(
        name="__snippet__",
        args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=[*tree.body, *trailer.body],
        decorator_list=[],
        returns=None,
        type_comment=None,
        lineno=1,
        col_offset=0,
    )
    module = ast.Module(body=[function], type_ignores=[])
    ast.fix_missing_locations(module)
    return compile(module, "<snippet>", "exec"), True


def _jsonable(value: object) -> object:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _error(exc: BaseException) -> dict:
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<snippet>"]
    lines = traceback.format_list(frames) if frames else []
    lines += traceback.format_exception_only(type(exc), exc)
    line = frames[-1].lineno if frames else getattr(exc, "lineno", None)
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "line": line,
        "traceback": "".join(lines)[-4000:],
    }


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    result_fd = int(request["result_fd"])
    scratch = request["scratch"]
    os.chdir(scratch)
    status = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    read_dirs = [p for p in sys.path if p and os.path.isdir(p)]
    isolation = {
        "network_namespace": _unshare_network(),
        "landlock_abi": _landlock(
            read_dirs + [p for p in _SYSTEM_LIBRARY_DIRS if os.path.isdir(p)],
            [p for p in _SYSTEM_FILES if os.path.isfile(p)],
            [scratch],
        ),
        "capabilities_dropped": _drop_capabilities(),
        "audit_hook": True,
        "root": os.geteuid() == 0,
    }
    envelope: dict = {"isolation": isolation}
    sys.modules.pop("ctypes", None)  # a new import of ctypes goes through the audit hook
    sys.modules.pop("_ctypes", None)
    missing = [
        name
        for name, ok in (
            ("network namespace", isolation["network_namespace"]),
            ("Landlock", isolation["landlock_abi"]),
        )
        if not ok
    ]
    if request.get("require_isolation") and missing:
        envelope["error"] = {
            "type": "SandboxUnavailable",
            "message": "this host cannot isolate Python snippets (missing: "
            + ", ".join(missing)
            + ")",
        }
        _write(result_fd, envelope)
        return
    import linecache
    import traceback  # noqa: F401  (loaded before the hook: formatting errors reads no files)

    source = request["code"]
    linecache.cache["<snippet>"] = (len(source), None, source.splitlines(True), "<snippet>")
    try:
        code, is_function = _compile(source)
    except SyntaxError as exc:
        envelope["error"] = _error(exc)
        _write(result_fd, envelope)
        return
    data = json.loads(request["data"], object_hook=Namespace)
    scope: dict = {"__name__": "__snippet__", "__builtins__": __builtins__}
    for name, value in data["globals"].items():
        scope[name] = value
    scope["inputs"] = data["inputs"]
    scope["variables"] = data["inputs"]
    scope["shared"] = data["shared"]
    scope["__no_result__"] = _NO_RESULT
    _set_limits(request, status)
    os.close(status)
    _install_audit_hook(scratch, read_dirs, int(request["max_files"]))
    try:
        exec(code, scope)
        value = scope["__snippet__"]() if is_function else scope.get("result", _NO_RESULT)
        envelope["output"] = None if value is _NO_RESULT else value
        envelope["ok"] = True
    except SystemExit as exc:
        if exc.code in (None, 0):
            value = scope.get("result", _NO_RESULT)
            envelope["output"] = None if value is _NO_RESULT else value
            envelope["ok"] = True
        else:
            envelope["error"] = {"type": "SystemExit", "message": f"sys.exit({exc.code!r})"}
    except BaseException as exc:  # noqa: BLE001  (whatever the snippet raised is its error)
        envelope["error"] = _error(exc)
    _write(result_fd, envelope)


def _write(fd: int, envelope: dict) -> None:
    try:
        text = json.dumps(envelope, default=_jsonable, allow_nan=False)
    except (TypeError, ValueError) as exc:
        envelope.pop("output", None)
        envelope["ok"] = False
        envelope["error"] = {
            "type": "ResultError",
            "message": f"the result is not JSON data: {exc}",
        }
        text = json.dumps(envelope, default=str)
    payload = text.encode("utf-8")
    while payload:
        written = os.write(fd, payload)
        payload = payload[written:]


if __name__ == "__main__":
    main()
