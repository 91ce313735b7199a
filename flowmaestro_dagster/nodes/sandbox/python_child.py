"""The child side of the Python code sandbox (standard library only; docs/sandbox.md).

`flowmaestro_dagster.nodes.sandbox.python` starts `python -I -S -B -u -X utf8 -c <this file>`
with stdout/stderr redirected to files, one JSON request on stdin and a result descriptor;
in mode `auto` inside bubblewrap when the host has it (new mount, PID, network, IPC and UTS
namespaces, a read-only view of the standard library and system libraries, `/scratch`).
Before the snippet runs, this script closes every door it can, in this order:

1. every inherited descriptor but stdio and the result descriptor is closed;
2. without bubblewrap: its own network, PID, IPC, UTS (and, when not root, user) namespaces,
   then a fork, so the snippet runs as pid 1 of the new PID namespace (its death kills every
   process left in it) while this process relays its exit status;
3. as root under bubblewrap: a uid of its own for this run (`request["uid"]`), so that
   RLIMIT_NPROC (counted per uid, or per user namespace) limits this run alone;
4. Landlock: read-only the Python installation and system libraries, read-write the scratch
   directory, nothing else; no execve; no TCP bind/connect (ABI 4); no signals to, or abstract
   sockets of, processes outside the sandbox (ABI 6);
5. `no_new_privs`, every capability dropped, and a seccomp filter refusing namespaces, mounts,
   ptrace, keyrings, BPF, io_uring, userfaultfd, perf events and non-Unix sockets;
6. resource limits: CPU seconds, address space, processes, file size, open files, no cores;
7. a `sys.addaudithook` hook with clear messages for what the layers above refuse anyway. It
   is a nicety, not a barrier: code in the same interpreter can switch it off.

In mode `auto` the snippet is refused (`SandboxUnavailable`) unless files, the network,
processes and their number are each held by a kernel layer; in mode `none` only 1, 6 (without
RLIMIT_NPROC, which would count the worker user's processes) and 7 apply. Then the snippet
runs; the outcome goes to the result descriptor as one JSON object.
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
_CLONE_NEWNS = 0x00020000
_CLONE_NEWTIME = 0x00000080
_CLONE_NEWCGROUP = 0x02000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_PR_SET_SECCOMP = 22
_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYSTEM_LIBRARY_DIRS = (
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/lib",
)
_DATA_DIRS = ("/usr/share/zoneinfo",)  # readable by snippets (the `zoneinfo` module's database)
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")

# seccomp: per architecture, its AUDIT_ARCH value and the numbers of `clone`, `socket` and the
# system calls a snippet never needs and a sandbox escape often does (uapi asm/unistd*.h).
_SECCOMP_ARCH = {
    "x86_64": (0xC000003E, 56, 41),
    "aarch64": (0xC00000B7, 220, 198),
}
_SECCOMP_DENIED = {
    # unshare setns mount umount2 pivot_root chroot ptrace process_vm_readv/writev kcmp keyctl
    # add_key request_key bpf perf_event_open userfaultfd io_uring_setup/enter/register
    # open_by_handle_at name_to_handle_at kexec_load kexec_file_load init/finit/delete_module
    # reboot swapon swapoff acct quotactl syslog personality fsopen fsconfig fsmount fspick
    # move_mount open_tree mount_setattr
    "x86_64": (
        272, 308, 165, 166, 155, 161, 101, 310, 311, 312, 250, 248, 249, 321, 298, 323,
        425, 426, 427, 304, 303, 246, 320, 175, 313, 176, 169, 167, 168, 163, 179, 103,
        135, 430, 431, 432, 433, 429, 428, 442,
    ),
    "aarch64": (
        97, 268, 40, 39, 41, 51, 117, 270, 271, 272, 219, 217, 218, 280, 241, 282,
        425, 426, 427, 265, 264, 104, 294, 105, 273, 106, 142, 224, 225, 89, 60, 116,
        92, 430, 431, 432, 433, 429, 428, 442,
    ),
}  # fmt: skip
_SYS_CLONE3 = 435  # refused with ENOSYS: libc falls back to clone, whose flags can be checked


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


def _close_descriptors(keep: set[int]) -> None:
    """Close every descriptor but `keep`: nothing the worker had open reaches the snippet."""
    edge = 0
    for fd in sorted(keep):
        if fd > edge:  # closerange(n, n) would close everything from n (close_range(n, ~0))
            os.closerange(edge, fd)
        edge = fd + 1
    os.closerange(edge, max(os.sysconf("SC_OPEN_MAX"), 1024))


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


def _unshare_namespaces() -> dict[str, bool]:
    """Without bubblewrap: network, PID, IPC and UTS namespaces of our own (and a user
    namespace when not root, which unprivileged unshare needs and RLIMIT_NPROC counts in)."""
    user = os.geteuid() != 0
    flags = _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS
    try:
        libc = _libc()
        if libc.unshare(flags | (_CLONE_NEWUSER if user else 0)) == 0:  # type: ignore[attr-defined]
            return {"network_namespace": True, "pid_namespace": True, "user_namespace": user}
    except (OSError, AttributeError):
        pass
    network = _unshare_network()
    return {
        "network_namespace": network,
        "pid_namespace": False,
        "user_namespace": network and user,
    }


def _enter_pid_namespace(info_fd: int | None) -> None:
    """Fork after unshare(CLONE_NEWPID): the child, pid 1 of the new namespace, returns and runs
    the snippet; when it dies the kernel kills whatever is left in the namespace, `setsid` or
    not. This process reports the child's pid on `info_fd` and exits as the child did."""
    pid = os.fork()
    if pid == 0:
        try:
            _libc().prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)  # type: ignore[attr-defined]  # SIGKILL
        finally:
            if info_fd is not None:
                os.close(info_fd)
        return
    if info_fd is not None:
        os.write(info_fd, json.dumps({"child-pid": pid}).encode())
        os.close(info_fd)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)  # a signal N as 128 + N, like bubblewrap


def _become(uid: int) -> None:
    """Root under bubblewrap: this run's own uid and gid (capabilities go with root). First the
    bounding set is emptied, while CAP_SETPCAP (kept by bubblewrap for this) still allows it:
    bubblewrap leaves the host's, and no capability can drop it after the switch."""
    _drop_bounding_set(_libc())
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


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
    """No capability left, in any user namespace, and none to be had again (`no_new_privs`)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        bounding_empty = _drop_bounding_set(libc)

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
        return bool(libc.capset(ctypes.byref(header), data) == 0) and bounding_empty
    except (OSError, AttributeError):
        return False


def _drop_bounding_set(libc: object) -> bool:
    """Empty the capability bounding set (needs CAP_SETPCAP); whether it is empty now."""
    prctl = libc.prctl  # type: ignore[attr-defined]
    for cap in range(64):
        if prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
            prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    return all(prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) != 1 for cap in range(64))


def _seccomp() -> bool:
    """A seccomp filter: the calls in `_SECCOMP_DENIED`, `clone` with a namespace flag and
    sockets other than AF_UNIX fail (EPERM, EACCES); another architecture's calls kill."""
    arch = os.uname().machine
    if arch not in _SECCOMP_ARCH:
        return False
    import ctypes
    import struct

    audit_arch, clone, socket = _SECCOMP_ARCH[arch]
    load, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill, errno = 0x7FFF0000, 0x80000000, 0x00050000
    eperm, eacces, enosys = errno | 1, errno | 13, errno | 38
    namespaces = (
        _CLONE_NEWNS
        | _CLONE_NEWTIME
        | _CLONE_NEWCGROUP
        | _CLONE_NEWUTS
        | _CLONE_NEWIPC
        | _CLONE_NEWUSER
        | _CLONE_NEWPID
        | _CLONE_NEWNET
    )
    program = [
        (load, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, audit_arch),
        (ret, 0, 0, kill),
        (load, 0, 0, 0),  # seccomp_data.nr
    ]
    if arch == "x86_64":
        program += [(jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]  # the x32 ABI
    for number in _SECCOMP_DENIED[arch]:
        program += [(jeq, 0, 1, number), (ret, 0, 0, eperm)]
    program += [(jeq, 0, 1, _SYS_CLONE3), (ret, 0, 0, enosys)]
    # clone(flags, ...) and socket(family, ...): the first argument's low 32 bits, offset 16.
    program += [(jeq, 0, 4, clone), (load, 0, 0, 16), (jset, 0, 1, namespaces)]
    program += [(ret, 0, 0, eperm), (ret, 0, 0, allow)]
    program += [(jeq, 0, 4, socket), (load, 0, 0, 16), (jeq, 1, 0, 1)]  # AF_UNIX
    program += [(ret, 0, 0, eacces), (ret, 0, 0, allow)]
    program += [(ret, 0, 0, allow)]
    code = b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code, len(code))

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Program(len(program), ctypes.cast(buffer, ctypes.c_void_p))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        return bool(
            libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0
        )
    except (OSError, AttributeError):
        return False


def _set_limits(
    request: dict, status: int, processes: int | None, address_space: bool = True
) -> None:
    """`status` is an open descriptor of /proc/self/status (opened before Landlock);
    `processes` is RLIMIT_NPROC, set only where it counts this run alone; `address_space`:
    RLIMIT_AS too (the JavaScript child bounds memory with RLIMIT_DATA instead)."""
    import resource

    def limit(which: int, value: int, hard: int | None = None) -> None:
        _soft, current_hard = resource.getrlimit(which)
        wanted_hard = value if hard is None else hard
        if current_hard != resource.RLIM_INFINITY:
            value = min(value, current_hard)
            wanted_hard = min(wanted_hard, current_hard)
        resource.setrlimit(which, (value, wanted_hard))

    # SIGKILL at the limit itself: the snippet runs as pid 1 of its PID namespace, and the
    # kernel drops SIGXCPU (the soft limit's signal) for a namespace's init.
    cpu = max(int(request["cpu_seconds"]), 1)
    limit(resource.RLIMIT_CPU, cpu, cpu)
    limit(resource.RLIMIT_FSIZE, int(request["max_file_bytes"]))
    limit(resource.RLIMIT_NOFILE, int(request["max_open_files"]))
    limit(resource.RLIMIT_CORE, 0)
    if processes is not None:
        limit(resource.RLIMIT_NPROC, processes)
    if address_space:
        # The address space the interpreter has now, plus what the snippet may allocate.
        limit(resource.RLIMIT_AS, _vm_size(status) + int(request["memory_bytes"]))


def _vm_size(status: int, field: str = "VmSize") -> int:
    """A size from /proc/self/status (`VmSize`, `VmData`, ...), in bytes."""
    text = os.pread(status, 8192, 0).decode("ascii", errors="replace")
    for line in text.splitlines():
        if line.startswith(field + ":"):
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


def _isolate(request: dict) -> dict:
    """Apply the kernel layers (mode `auto`); what holds, as reported in `metadata.sandbox`."""
    contained = request.get("isolation") != "none"
    layers = dict(request.get("layers") or {})
    info_fd = request.get("info_fd")
    if contained and not layers.get("bubblewrap"):
        layers.update(_unshare_namespaces())
        if layers["pid_namespace"]:
            _enter_pid_namespace(info_fd)
            info_fd = None
    if info_fd is not None:
        os.close(info_fd)
    status = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    uid = request.get("uid")
    if uid is not None:
        _become(int(uid))
    os.chdir(request["scratch"])
    read_dirs = [p for p in (*sys.path, *_DATA_DIRS) if p and os.path.isdir(p)]
    extra = [p for p in request.get("read_dirs") or () if os.path.isdir(p)]  # the JS child's V8
    landlock = 0
    seccomp = capabilities = False
    if contained:
        landlock = _landlock(
            read_dirs + extra + [p for p in _SYSTEM_LIBRARY_DIRS if os.path.isdir(p)],
            [p for p in _SYSTEM_FILES if os.path.isfile(p)],
            [request["scratch"]],
        )
        capabilities = _drop_capabilities()
        seccomp = _seccomp()
    # RLIMIT_NPROC counts the processes of a uid (per user namespace): it limits this run alone
    # only under a uid or user namespace of its own.
    own_count = uid is not None or bool(layers.get("user_namespace"))
    return {
        "mode": "auto" if contained else "none",
        "bubblewrap": bool(layers.get("bubblewrap")),
        "mount_namespace": bool(layers.get("mount_namespace")),
        "pid_namespace": os.getpid() == 1,
        "network_namespace": bool(layers.get("network_namespace")),
        "user_namespace": bool(layers.get("user_namespace")),
        "landlock_abi": landlock,
        "seccomp": seccomp,
        "capabilities_dropped": capabilities,
        "process_limit": int(request["max_processes"]) if contained and own_count else None,
        "uid": os.getuid(),
        "root": os.geteuid() == 0 and not layers.get("user_namespace"),
        "audit_hook": True,
        "_status": status,
        "_read_dirs": read_dirs,
    }


def _missing_barriers(isolation: dict) -> list[str]:
    """The barriers no kernel layer holds here (mode `auto` refuses to run the snippet)."""
    landlock = int(isolation["landlock_abi"])
    missing = []
    if not (isolation["mount_namespace"] or landlock >= 1):
        missing.append("files (a mount namespace or Landlock)")
    if not (isolation["network_namespace"] or landlock >= 4):
        missing.append("the network (a network namespace or Landlock ABI 4)")
    if not isolation["pid_namespace"]:
        missing.append("processes (a PID namespace)")
    if isolation["process_limit"] is None:
        missing.append("the process count (RLIMIT_NPROC needs a uid or user namespace of its own)")
    return missing


def refusal(language: str, missing: list[str], why: str | None) -> str:
    """Why mode `auto` refuses to run a snippet here, and what the operator can do."""
    return (
        f"{language} code nodes cannot be isolated on this host: nothing guards "
        + ", ".join(missing)
        + (f"; {why}" if why else "")
        + ". Install bubblewrap (scripts/system-deps.sh), or set "
        "FLOWMAESTRO_PYTHON_ISOLATION=none to run them without isolation (docs/sandbox.md)"
    )


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    result_fd = int(request["result_fd"])
    info_fd = request.get("info_fd")
    _close_descriptors({0, 1, 2, result_fd} | ({int(info_fd)} if info_fd is not None else set()))
    scratch = request["scratch"]
    isolation = _isolate(request)
    status = isolation.pop("_status")
    read_dirs = isolation.pop("_read_dirs")
    envelope: dict = {"isolation": isolation}
    sys.modules.pop("ctypes", None)  # a new import of ctypes goes through the audit hook
    sys.modules.pop("_ctypes", None)
    missing = _missing_barriers(isolation)
    if isolation["mode"] == "auto" and missing:
        envelope["error"] = {
            "type": "SandboxUnavailable",
            "message": refusal("Python", missing, request.get("bubblewrap_error")),
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
    _set_limits(request, status, isolation["process_limit"])
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
