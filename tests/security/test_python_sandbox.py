"""The Python code node runs isolated by default and cannot escape or outlive its node (issue 15,
row 6).

Every attack first switches the in-process audit hook off (the `busy` set of its closure, found
through `gc`), so what stops it is the kernel: bubblewrap's namespaces, Landlock, seccomp and
resource limits (docs/sandbox.md). A host without Landlock or `unshare` is made for real: a
helper process installs a seccomp filter that fails those calls, and runs the node under it.
"""

import errno
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowmaestro_dagster.errors import NodeConfigurationError, NodeExecutionError
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.code import execute_code
from flowmaestro_dagster.nodes.sandbox import python as python_sandbox
from flowmaestro_dagster.settings import CodeSettings, Settings, get_settings
from flowmaestro_dagster.spec.configs import CodeConfig

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings(python_isolation="auto")

# Switch the audit hook off from inside the snippet: add this thread to the hook's `busy` set.
BYPASS = """
import _thread, gc
hooks = [o for o in gc.get_objects() if callable(o) and getattr(o, "__name__", "") == "hook"
         and "busy" in getattr(getattr(o, "__code__", None), "co_freevars", ())]
for h in hooks:
    h.__closure__[h.__code__.co_freevars.index("busy")].cell_contents.add(_thread.get_ident())
import socket  # refused by the hook while it is on
print("audit hook off:", len(hooks), flush=True)
"""

# Run one code node in a process where `sys.argv[1]` (syscall numbers) fail with ENOSYS, as on
# a host without them; the filter is inherited by everything the node starts.
HOST_WITHOUT = r"""
import ctypes, json, struct, sys
program = [(0x20, 0, 0, 0)]  # load the syscall number
for number in json.loads(sys.argv[1]):
    program += [(0x15, 0, 1, number), (0x06, 0, 0, 0x00050000 | 38)]
program += [(0x06, 0, 0, 0x7FFF0000)]
code = b"".join(struct.pack("=HBBI", *i) for i in program)
buffer = ctypes.create_string_buffer(code, len(code))
class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Program(len(program), ctypes.cast(buffer, ctypes.c_void_p))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0 and libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0

from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.code import execute_code
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.spec.configs import CodeConfig

config = CodeConfig(language="python", code=sys.stdin.read(), timeout_ms=5000)
ctx = NodeContext(node_id="code-1", node_type="code", label="Code", config=config,
                  state=ExecutionState.start({}), services={"settings": Settings()})
try:
    print(json.dumps({"output": execute_code(ctx).output}, default=str))
except Exception as exc:
    details = getattr(exc, "details", {})
    print(json.dumps({"error": str(exc), "type": type(exc).__name__,
                      "stdout": details.get("stdout", "")}, default=str))
"""
# Landlock alone: the child's own `_landlock` in a plain process (no bubblewrap, no namespace,
# no audit hook); the child's source comes on stdin, so what runs is what the sandbox runs.
LANDLOCK_ALONE = r"""
import json, os, sys, types
child = types.ModuleType("python_child")
exec(compile(sys.stdin.read(), "python_child.py", "exec"), child.__dict__)
secret, scratch = sys.argv[1:3]
def attempt(action):
    try:
        action()
        return "allowed"
    except OSError as exc:
        return type(exc).__name__
before = open(secret).read()  # readable until Landlock is on
os.chdir(scratch)
abi = child._landlock([p for p in sys.path if p and os.path.isdir(p)], [], [scratch])
found = {
    "read": attempt(lambda: open(secret).read()),
    "list": attempt(lambda: os.listdir(os.path.dirname(secret))),
    "append": attempt(lambda: open(secret, "a").write("x")),
    "create beside": attempt(lambda: open(secret + ".new", "w").close()),
    "through a symlink": attempt(lambda: (os.symlink(secret, "link"), open("link").read())),
    "scratch": attempt(lambda: open("own.txt", "w").write("mine")),
    "stdlib": attempt(lambda: open(os.__file__).read(1)),
}
print(json.dumps({"abi": abi, "before": before, "found": found}))
"""
LANDLOCK_SYSCALLS = [444, 445, 446]  # the same number on every architecture
UNSHARE_SYSCALL = {"x86_64": 272, "aarch64": 97}


def _ctx(code: str, settings: Settings, timeout_ms: float, memory_mb: float | None) -> NodeContext:
    return NodeContext(
        node_id="code-1",
        node_type="code",
        label="Code",
        config=CodeConfig(language="python", code=code, timeout_ms=timeout_ms, memory_mb=memory_mb),
        state=ExecutionState.start({}),
        services={"settings": settings},
    )


def _run(
    code: str,
    *,
    settings: Settings = SETTINGS,
    timeout_ms: float = 5000,
    memory_mb: float | None = None,
) -> Any:
    return execute_code(_ctx(code, settings, timeout_ms, memory_mb)).output


def _fails(code: str, *, timeout_ms: float = 5000, memory_mb: float | None = None) -> Any:
    """The node's failure (its details carry stdout)."""
    with pytest.raises(NodeExecutionError) as caught:
        _run(code, timeout_ms=timeout_ms, memory_mb=memory_mb)
    return caught.value


def _on_host_without(syscalls: list[int], code: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", HOST_WITHOUT, json.dumps(syscalls)],
        input=code,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **env},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _unshare() -> int:
    machine = os.uname().machine
    if machine not in UNSHARE_SYSCALL:
        pytest.skip(f"no unshare number known for {machine}")
    return UNSHARE_SYSCALL[machine]


def _named(marker: str) -> list[int]:
    """Processes on this host whose name (`comm`) is `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == marker:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def marker() -> Iterator[str]:
    """A process name the snippet gives its processes; any left over is killed afterwards."""
    name = "fm" + secrets.token_hex(5)
    yield name
    for pid in _named(name):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def secret_files(tmp_path: Path) -> tuple[str, list[Path]]:
    """A token in DAGSTER_HOME's secret file, the platform database and a file outside."""
    token = "fm-secret-" + secrets.token_hex(8)
    home = tmp_path / "dagster_home"
    home.mkdir()
    files = [home / ".secret-key", home / "flowmaestro.db", tmp_path / "outside.txt"]
    for path in files:
        path.write_text(token)
        path.chmod(0o600)
    return token, files


@pytest.fixture
def listener() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP server on 127.0.0.1 and the connections it accepted."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()
    for connection in accepted:
        connection.close()


def _read_attempts(paths: list[str]) -> str:
    """Snippet code: try to read each path directly, through a symlink, and list its folder."""
    return f"""
import os
found = {{}}
for i, path in enumerate({paths!r}):
    for how in ("open", "symlink", "listdir"):
        try:
            if how == "open":
                value = open(path, "rb").read().decode()
            elif how == "symlink":
                os.symlink(path, f"link{{i}}")
                value = open(f"link{{i}}", "rb").read().decode()
            else:
                value = os.listdir(os.path.dirname(path))
        except OSError as exc:
            value = type(exc).__name__
        found[f"{{how}} {{path}}"] = value
"""


def _connect_attempt(port: int) -> str:
    return f"""
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    found["connect"] = "connected"
except OSError as exc:
    found["connect"] = type(exc).__name__
"""


# -- files and the environment -------------------------------------------------------------


def test_the_default_sandbox_has_every_layer_of_this_host() -> None:
    why = python_sandbox.bubblewrap_status()
    assert why is None, f"bubblewrap should sandbox Python here (scripts/system-deps.sh): {why}"
    sandbox = _run("return 1")["metadata"]["sandbox"]
    assert sandbox["mode"] == "auto" and sandbox["bubblewrap"]
    assert sandbox["mount_namespace"] and sandbox["pid_namespace"]
    assert sandbox["network_namespace"] and sandbox["seccomp"]
    assert sandbox["landlock_abi"] >= 1  # this host: Linux 6.x, ABI 7
    assert sandbox["process_limit"] == CodeSettings().python_max_processes
    assert not sandbox["root"]


def test_platform_files_stay_unreadable_with_the_audit_hook_off(
    secret_files: tuple[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    token, files = secret_files
    monkeypatch.setenv("DAGSTER_HOME", str(files[0].parent))
    repository = ROOT / "pyproject.toml"
    paths = [*map(str, files), str(repository), "/etc/passwd", f"/proc/{os.getpid()}/environ"]
    output = _run(BYPASS + _read_attempts(paths) + "return found")
    assert "audit hook off: 1" in output["stdout"]
    found = output["output"]
    assert token not in json.dumps(found)
    assert repository.read_text()[:40] not in json.dumps(found)
    assert all(value in ("FileNotFoundError", "PermissionError") for value in found.values())


def test_without_landlock_the_mount_namespace_still_hides_files_and_the_network(
    secret_files: tuple[str, list[Path]], listener: tuple[int, list[socket.socket]]
) -> None:
    """A host without Landlock and `unshare` (the old sandbox's only kernel layers there)."""
    token, files = secret_files
    port, accepted = listener
    code = BYPASS + _read_attempts([str(p) for p in files]) + _connect_attempt(port)
    result = _on_host_without(
        [*LANDLOCK_SYSCALLS, _unshare()],
        code + "return found",
        {"DAGSTER_HOME": str(files[0].parent)},
    )
    assert "error" not in result, result
    assert "audit hook off: 1" in result["output"]["stdout"]
    assert result["output"]["metadata"]["sandbox"]["landlock_abi"] == 0  # really without it
    found = result["output"]["output"]
    assert token not in json.dumps(found)
    assert found["connect"] != "connected" and accepted == []


def test_where_no_layer_holds_the_node_is_refused_not_run(
    listener: tuple[int, list[socket.socket]],
) -> None:
    """No bubblewrap, no Landlock, no unshare: refused, naming what is missing and the way out."""
    port, accepted = listener
    code = BYPASS + "found = {}\n" + _connect_attempt(port) + "print('snippet ran')\nreturn found"
    result = _on_host_without(
        [*LANDLOCK_SYSCALLS, _unshare()], code, {"FLOWMAESTRO_CODE__PYTHON_BWRAP": ""}
    )
    assert result.get("type") == NodeConfigurationError.__name__, result
    assert "cannot be isolated on this host" in result["error"]
    assert "files" in result["error"] and "network" in result["error"]
    assert "FLOWMAESTRO_PYTHON_ISOLATION=none" in result["error"]
    assert "snippet ran" not in result["stdout"] and accepted == []


def test_snippet_gets_no_platform_environment_or_descriptors(
    secret_files: tuple[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    token, files = secret_files
    monkeypatch.setenv("DAGSTER_HOME", str(files[0].parent))
    monkeypatch.setenv("FLOWMAESTRO_CANARY", token)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", token)
    held = os.open(files[0], os.O_RDONLY)  # inheritable: a careless spawn would pass it on
    os.set_inheritable(held, True)
    try:
        output = _run(
            "import os\n"
            "def is_open(fd):\n"
            "    try:\n"
            "        os.fstat(fd)\n"
            "        return True\n"
            "    except OSError:\n"
            "        return False\n"
            "return {'env': dict(os.environ), 'fds': [fd for fd in range(3, 1024) if is_open(fd)]}"
        )["output"]
    finally:
        os.close(held)
    assert not [k for k in output["env"] if k.startswith(("FLOWMAESTRO_", "DAGSTER_"))]
    assert token not in json.dumps(output["env"])
    assert len(output["fds"]) == 1  # the result file, empty until the snippet is done


# -- processes -------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["returns", "times out"])
def test_setsid_grandchild_does_not_outlive_its_node(marker: str, ending: str) -> None:
    code = BYPASS + (
        "import ctypes, os, time\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        ctypes.CDLL(None).prctl(15, b'{marker}', 0, 0, 0)  # PR_SET_NAME\n"
        "        os.write(w, b'x')\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "os.read(r, 1)\n"
        "print('grandchild up', flush=True)\n"
    )
    if ending == "returns":
        output = _run(code + "return 'left it behind'")
        assert "grandchild up" in output["stdout"]
    else:
        failure = _fails(code + "time.sleep(60)", timeout_ms=1000)
        assert "timed out after 1000 ms" in str(failure)
        assert "grandchild up" in failure.details["stdout"]
    assert _named(marker) == []


def test_fork_bomb_is_stopped_and_the_worker_carries_on(marker: str) -> None:
    name = f"import ctypes, os, time\nctypes.CDLL(None).prctl(15, b'{marker}', 0, 0, 0)\n"
    eight = Settings(python_isolation="auto", code=CodeSettings(python_max_processes=8))
    counted = _run(
        BYPASS
        + name
        + "started = 0\n"
        + "try:\n"
        + "    while started < 300:\n"
        + "        if os.fork() == 0:\n"
        + "            time.sleep(60)\n"
        + "            os._exit(0)\n"
        + "        started += 1\n"
        + "except OSError as exc:\n"
        + "    print('fork refused:', exc.errno, flush=True)\n"
        + "return started",
        settings=eight,
    )
    assert counted["output"] < 8  # RLIMIT_NPROC counts the snippet's own process too
    assert "fork refused: 11" in counted["stdout"]  # EAGAIN: RLIMIT_NPROC
    explosive = "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    failure = _fails(BYPASS + name + explosive, timeout_ms=1000)
    assert "1000 ms" in str(failure)
    assert _named(marker) == []
    assert _run("return 2")["output"] == 2
    subprocess.run(["true"], check=True)  # the worker can still start processes


def test_memory_hog_is_stopped() -> None:
    failure = _fails(BYPASS + "hog = bytearray(1 << 30)", memory_mb=64)
    assert "exceeded its memory limit (64 MB)" in str(failure)
    assert _run("return 3")["output"] == 3


def test_network_is_unreachable_with_the_audit_hook_off(
    listener: tuple[int, list[socket.socket]],
) -> None:
    port, accepted = listener
    output = _run(BYPASS + "found = {}\n" + _connect_attempt(port) + "return found")
    assert "audit hook off: 1" in output["stdout"]
    assert output["output"]["connect"] != "connected" and accepted == []


# -- one test per kernel layer, each observed from inside the snippet -----------------------


def test_seccomp_refuses_namespaces_ptrace_and_network_sockets() -> None:
    """Each call below is harmless or succeeds without the filter; with it: its errno."""
    output = _run(
        BYPASS
        + "import ctypes, socket\n"
        + "libc = ctypes.CDLL(None, use_errno=True)\n"
        + "found = {}\n"
        + "def call(name, *args):\n"
        + "    ctypes.set_errno(0)\n"
        + "    found[name] = [getattr(libc, name)(*args), ctypes.get_errno()]\n"
        + "call('unshare', 0)\n"  # no flag at all: refused as a whole
        + "call('ptrace', 0, 0, 0, 0)\n"  # PTRACE_TRACEME
        + "call('personality', 0xFFFFFFFF)\n"  # only reads the persona
        + "call('syscall', 435, 0, 0)\n"  # clone3 (the same number everywhere)
        + "for family in ('AF_INET', 'AF_INET6', 'AF_NETLINK', 'AF_UNIX'):\n"
        + "    try:\n"
        + "        socket.socket(getattr(socket, family), socket.SOCK_RAW if family == "
        + "'AF_NETLINK' else socket.SOCK_DGRAM).close()\n"
        + "        found[family] = 'created'\n"
        + "    except OSError as exc:\n"
        + "        found[family] = exc.errno\n"
        + "return found"
    )
    assert "audit hook off: 1" in output["stdout"]
    found = output["output"]
    assert found["unshare"] == [-1, errno.EPERM]
    assert found["ptrace"] == [-1, errno.EPERM]
    assert found["personality"] == [-1, errno.EPERM]
    assert found["syscall"] == [-1, errno.ENOSYS]  # clone3: libc falls back to clone
    assert found["AF_INET"] == found["AF_INET6"] == found["AF_NETLINK"] == errno.EACCES
    assert found["AF_UNIX"] == "created"
    assert output["metadata"]["sandbox"]["seccomp"]


def test_no_capability_is_left_in_any_set() -> None:
    """capget and the bounding set (Landlock keeps /proc/self/status unreadable)."""
    output = _run(
        BYPASS
        + "import ctypes, os\n"
        + "libc = ctypes.CDLL(None, use_errno=True)\n"
        + "class Header(ctypes.Structure):\n"
        + "    _fields_ = [('version', ctypes.c_uint32), ('pid', ctypes.c_int)]\n"
        + "header, data = Header(0x20080522, 0), (ctypes.c_uint32 * 6)()\n"
        + "assert libc.capget(ctypes.byref(header), data) == 0\n"
        + "try:\n"
        + "    os.setuid(0)\n"
        + "    setuid = 'root again'\n"
        + "except OSError as exc:\n"
        + "    setuid = exc.errno\n"
        + "return {\n"
        + "    'uid': os.getuid(),\n"
        + "    'effective, permitted, inheritable': list(data),\n"
        + "    'bounding': [c for c in range(64) if libc.prctl(23, c, 0, 0, 0) == 1],\n"
        + "    'ambient': [c for c in range(64) if libc.prctl(47, 1, c, 0, 0) == 1],\n"
        + "    'no_new_privs': libc.prctl(39, 0, 0, 0, 0),\n"
        + "    'setuid(0)': setuid,\n"
        + "}"
    )
    found = output["output"]
    assert found["effective, permitted, inheritable"] == [0] * 6
    assert found["bounding"] == [] and found["ambient"] == []
    assert found["no_new_privs"] == 1
    assert found["setuid(0)"] == errno.EPERM and found["uid"] != 0
    assert output["metadata"]["sandbox"]["capabilities_dropped"]


def test_file_size_limit_stops_a_write_with_efbig() -> None:
    one_mb = Settings(python_isolation="auto", code=CodeSettings(python_max_file_mb=1))
    output = _run(
        BYPASS
        + "import os\n"
        + "fd = os.open('big', os.O_WRONLY | os.O_CREAT)\n"
        + "written, refused = 0, None\n"
        + "try:\n"
        + "    while written < 4 << 20:\n"
        + "        written += os.write(fd, bytes(1 << 16))\n"
        + "except OSError as exc:\n"
        + "    refused = exc.errno\n"
        + "return {'written': written, 'refused': refused, 'size': os.fstat(fd).st_size}",
        settings=one_mb,
    )
    assert output["output"] == {"written": 1 << 20, "refused": errno.EFBIG, "size": 1 << 20}


def test_open_file_limit_stops_at_64_with_emfile() -> None:
    output = _run(
        BYPASS
        + "import os, resource\n"
        + "fds, refused = [], None\n"
        + "try:\n"
        + "    while len(fds) < 1000:\n"
        + "        fds.append(os.open('.', os.O_RDONLY))\n"
        + "except OSError as exc:\n"
        + "    refused = exc.errno\n"
        + "return {'refused': refused, 'highest': max(fds),\n"
        + "        'limit': resource.getrlimit(resource.RLIMIT_NOFILE)}"
    )
    limit = python_sandbox.PythonLimits(timeout_s=1, memory_mb=1).max_open_files
    assert output["output"] == {"refused": errno.EMFILE, "highest": limit - 1, "limit": [limit] * 2}


def test_cpu_limit_kills_a_spin_before_the_wall_clock_timeout() -> None:
    """A 1000 ms node gets 1 CPU second, then SIGKILL (pid 1 of a PID namespace ignores
    SIGXCPU); its wall-clock deadline is 2 s. Two threads hashing outside the GIL burn CPU
    faster than the wall clock; a run starved by a loaded machine (the deadline came before
    1 CPU second) proves nothing and is tried again."""
    code = BYPASS + (
        "import hashlib, resource, threading, time\n"
        "print('cpu limit', resource.getrlimit(resource.RLIMIT_CPU), flush=True)\n"
        "data = bytes(1 << 20)\n"
        "def burn():\n"
        "    while True:\n"
        "        hashlib.sha256(data).digest()\n"
        "for _ in range(2):\n"
        "    threading.Thread(target=burn, daemon=True).start()\n"
        "while True:\n"
        "    time.sleep(0.1)\n"
        "    print('cpu', time.process_time(), flush=True)\n"
    )
    for _attempt in range(3):
        failure = _fails(code, timeout_ms=1000)
        stdout = failure.details["stdout"]
        assert "cpu limit (1, 1)" in stdout
        if "exceeded its CPU time limit (1000 ms)" in str(failure):
            return
        assert "timed out after 1000 ms" in str(failure), failure
        used = [float(line.split()[1]) for line in stdout.splitlines() if line.startswith("cpu ")]
        assert max(used, default=0.0) < 1.05, f"ran on past its CPU limit: {used}"
    pytest.fail("the machine was too busy: three runs reached their wall-clock deadline first")


def test_landlock_alone_keeps_files_outside_its_rules_unreadable(
    secret_files: tuple[str, list[Path]], tmp_path: Path
) -> None:
    """No bubblewrap, namespace or audit hook: only the child's Landlock ruleset."""
    token, files = secret_files
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", LANDLOCK_ALONE, str(files[2]), str(scratch)],
        input=python_sandbox.CHILD_SOURCE,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["before"] == token  # readable before: what follows is Landlock's doing
    found = report["found"]
    assert found["scratch"] == found["stdlib"] == "allowed"
    assert {k: v for k, v in found.items() if k not in ("scratch", "stdlib")} == {
        "read": "PermissionError",
        "list": "PermissionError",
        "append": "PermissionError",
        "create beside": "PermissionError",
        "through a symlink": "PermissionError",
    }
    assert files[2].read_text() == token and not Path(f"{files[2]}.new").exists()
    assert report["abi"] >= 1


def test_landlock_refuses_proc_and_dev_that_the_mount_namespace_shows() -> None:
    """bubblewrap mounts a private /proc and /dev; only Landlock keeps them closed."""
    output = _run(
        BYPASS
        + "import os\n"
        + "found = {}\n"
        + "for path in ('/proc/self/status', '/proc/self/environ', '/proc/1/mem', '/dev/null'):\n"
        + "    os.stat(path)  # it is there\n"
        + "    for mode in ('rb', 'wb'):\n"
        + "        try:\n"
        + "            open(path, mode, buffering=0).close()\n"
        + "            found[f'{mode} {path}'] = 'opened'\n"
        + "        except OSError as exc:\n"
        + "            found[f'{mode} {path}'] = type(exc).__name__\n"
        + "return found"
    )
    assert "audit hook off: 1" in output["stdout"]
    found = output["output"]
    assert len(found) == 8 and set(found.values()) == {"PermissionError"}, found


# -- the operator's explicit opt-out ---------------------------------------------------------


def test_isolation_none_runs_and_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FLOWMAESTRO_PYTHON_ISOLATION", "none")
    settings = Settings()
    assert settings.python_isolation == "none"
    monkeypatch.setattr(python_sandbox, "_warned", set())  # warned once per process
    with caplog.at_level(logging.WARNING, logger="flowmaestro.sandbox"):
        output = _run("return 6 * 7", settings=settings)
    assert output["output"] == 42
    sandbox = output["metadata"]["sandbox"]
    assert sandbox["mode"] == "none" and not sandbox["bubblewrap"] and not sandbox["landlock_abi"]
    assert any("FLOWMAESTRO_PYTHON_ISOLATION=none" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("isolation", ["none", "auto"])
def test_loading_the_platform_definitions_warns_when_isolation_is_none(
    isolation: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """`platform_defs` (the sensors' code location) says so at startup, before any node runs."""
    from flowmaestro_dagster.definitions import platform_defs

    monkeypatch.setenv("FLOWMAESTRO_PYTHON_ISOLATION", isolation)
    monkeypatch.setenv("FLOWMAESTRO_DATABASE_URL", f"sqlite:///{tmp_path / 'platform.db'}")
    monkeypatch.setattr(python_sandbox, "_warned", set())
    get_settings.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="flowmaestro.sandbox"):
            definitions = platform_defs()
    finally:
        get_settings.cache_clear()  # the next test reads the environment again
    assert definitions.sensors
    warned = [r for r in caplog.records if "FLOWMAESTRO_PYTHON_ISOLATION=none" in r.getMessage()]
    assert len(warned) == (1 if isolation == "none" else 0)
