"""Code node: both upstream conventions, what a snippet sees, and the sandboxes' limits.

Every hostile snippet (endless loop, unbounded allocation, /etc/passwd, a socket, a process, a
signal) must fail its node with a clear message and leave the worker process and the machine
as they were: no surviving child processes, no files outside the scratch directory.
"""

import os
from pathlib import Path
from typing import Any

import pytest

from flowmaestro_dagster.errors import NodeConfigurationError, NodeExecutionError
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes.base import NodeContext
from flowmaestro_dagster.nodes.code import execute_code, global_names, snippet_names
from flowmaestro_dagster.settings import CodeSettings, Settings
from flowmaestro_dagster.spec.configs import CodeConfig
from flowmaestro_dagster.testing import run_workflow
from tests.builders import flow, node
from tests.conftest import load_corpus

SETTINGS = Settings()


def _state() -> ExecutionState:
    state = ExecutionState.start({"items": "[1, 2, 3]", "customer": {"name": "Ann"}})
    state = state.with_output("input", 0, {"data": {"number": 21}})
    state = state.with_output("score", 1, {"fit": {"score": 72, "tier": "gold"}})
    return state.with_scope({"item": "x", "index": 0}, iteration=0)


def _ctx(
    code: str, language: str = "javascript", settings: Settings = SETTINGS, **config: Any
) -> NodeContext:
    return NodeContext(
        node_id="code-1",
        node_type="code",
        label="Code",
        config=CodeConfig(language=language, code=code, **config),
        state=_state(),
        services={"settings": settings},
    )


def _run(code: str, language: str = "javascript", **config: Any) -> Any:
    return execute_code(_ctx(code, language, **config)).output


def _children() -> list[int]:
    """Processes whose parent is this test process (a leaked sandbox would show here)."""
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            found.append(int(entry.name))
    return found


# -- what a snippet sees -----------------------------------------------------------------------


def test_snippet_names_follow_reference_resolution() -> None:
    names = snippet_names(_state())
    # the node `input`: its output over the execution inputs (`{{input.customer}}` resolves)
    assert names["input"] == {**_state().inputs, "data": {"number": 21}}
    assert names["fit"] == {"score": 72, "tier": "gold"}  # a top-level key of an output
    assert names["customer"] == {"name": "Ann"}  # an execution input
    assert names["item"] == "x" and names["index"] == 0  # loop variables


def test_globals_never_shadow_the_language() -> None:
    names = ["input", "result", "type", "len", "Math", "x-y", "class", "data"]
    assert global_names(names, "python") == ("Math", "data")  # input/type/len are builtins
    assert global_names(names, "javascript") == ("input", "type", "len", "Math", "data")


@pytest.mark.parametrize("language", ["javascript", "python"])
def test_return_convention_with_inputs(language: str) -> None:
    code = {
        "javascript": "const n = inputs.input.data.number;\nreturn { doubled: n * 2, tier: fit.tier, item };",
        "python": "n = inputs.input.data.number\nreturn {'doubled': n * 2, 'tier': fit['tier'], 'item': item}",
    }[language]
    output = _run(code, language, output_variable="calc")
    assert output["calc"]["output"] == {"doubled": 42, "tier": "gold", "item": "x"}
    # The value's keys sit beside output/stdout/stderr/metadata, as corpus references expect.
    assert output["calc"]["doubled"] == 42
    assert output["calc"]["metadata"]["language"] == language


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("javascript", "result = JSON.parse(items).length + customer.name.length"),
        ("python", "import json\nresult = len(json.loads(items)) + len(customer.name)"),
    ],
)
def test_globals_and_result_convention(language: str, code: str) -> None:
    assert _run(code, language)["output"] == 6


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("javascript", "console.log('hello', {a: 1}); console.error('careful'); return 1"),
        (
            "python",
            "import sys\nprint('hello', {'a': 1})\nprint('careful', file=sys.stderr)\nreturn 1",
        ),
    ],
)
def test_stdout_and_stderr_are_captured(language: str, code: str) -> None:
    output = _run(code, language)
    assert output["output"] == 1
    assert output["stdout"].startswith("hello")
    assert output["stderr"] == "careful\n"


def test_javascript_async_and_no_value() -> None:
    assert _run("const v = await Promise.resolve(20); return v + 1")["output"] == 21
    assert _run("const a = 1;")["output"] is None


def test_python_scratch_directory_is_writable() -> None:
    code = "open('notes.txt', 'w').write('kept')\nreturn open('notes.txt').read()"
    assert _run(code, "python")["output"] == "kept"


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["javascript", "python"])
def test_endless_loop_times_out(language: str) -> None:
    code = "while (true) {}" if language == "javascript" else "while True:\n    pass"
    with pytest.raises(NodeExecutionError, match=r"(timed out after|CPU time limit) \(?1000 ms"):
        _run(code, language, timeout_ms=1000)
    assert _children() == []


def test_python_sleeping_snippet_is_killed_at_the_wall_clock_limit() -> None:
    with pytest.raises(NodeExecutionError, match="timed out after 1000 ms"):
        _run("import time\ntime.sleep(60)", "python", timeout_ms=1000)
    assert _children() == []


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("javascript", "const a = []; while (true) { a.push(new Array(100000).fill(1.5)); }"),
        ("python", "a = []\nwhile True:\n    a.append(bytearray(10**6))"),
    ],
)
def test_unbounded_allocation_hits_the_memory_limit(language: str, code: str) -> None:
    with pytest.raises(NodeExecutionError, match=r"exceeded its memory limit \(64 MB\)"):
        _run(code, language, memory_mb=64)
    assert _run("return 2", language)["output"] == 2  # the worker carries on


def test_javascript_has_no_memory_outside_the_heap_and_no_io() -> None:
    for code, missing in [
        ("return new ArrayBuffer(1 << 30).byteLength", "ArrayBuffer"),
        ("return new Uint8Array(10).length", "Uint8Array"),
        ("return require('fs')", "require"),
        ("return fetch('http://127.0.0.1/')", "fetch"),
    ]:
        with pytest.raises(NodeExecutionError, match=f"{missing} is not defined"):
            _run(code)
    with pytest.raises(NodeExecutionError, match="setTimeout is not available"):
        _run("await new Promise(r => setTimeout(r, 10)); return 1")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("return open('/etc/passwd').read()", "reading '/etc/passwd' is not permitted"),
        ("import os\nreturn os.listdir('/')", "listing '/' is not permitted"),
        ("open('/tmp/fm-sandbox-escape', 'w').write('x')", "writing '/tmp/fm-sandbox-escape'"),
        ("import socket\nsocket.create_connection(('127.0.0.1', 5432))", "importing 'socket'"),
        ("import os\nos.fork()", "starting a process is not permitted"),
        ("import os\nos.system('true')", "starting a process is not permitted"),
        ("import os\nos.kill(os.getppid(), 9)", "sending signals is not permitted"),
        ("import ctypes", "importing 'ctypes'"),
    ],
)
def test_python_sandbox_refuses_files_network_processes_and_signals(
    code: str, message: str
) -> None:
    with pytest.raises(NodeExecutionError, match=message):
        _run(code, "python")
    assert not Path("/tmp/fm-sandbox-escape").exists()
    assert _children() == []


_KERNEL_PROBE = """
import json, os, socket, sys
sys.path.insert(0, sys.argv[1])
import python_child as child
os.chdir(sys.argv[2])
layers = {
    "netns": child._unshare_network(),
    "landlock": child._landlock([p for p in sys.path[1:] if os.path.isdir(p)], [], [sys.argv[2]]),
    "caps": child._drop_capabilities(),
}
found = {}
for name, attempt in [
    ("passwd", lambda: open("/etc/passwd").read()),
    ("socket", lambda: socket.create_connection(("127.0.0.1", 5432), timeout=1)),
    ("signal", lambda: os.kill(os.getppid(), 0)),
    ("exec", lambda: os.execv("/bin/true", ["true"])),
]:
    try:
        attempt()
        found[name] = "allowed"
    except OSError as exc:
        found[name] = type(exc).__name__
print(json.dumps({"layers": layers, "found": found}))
"""


def test_python_kernel_layers_hold_without_the_audit_hook(tmp_path: Path) -> None:
    """The kernel layers alone (no audit hook installed) refuse files, sockets and signals."""
    import json
    import subprocess
    import sys

    from flowmaestro_dagster.nodes.sandbox import python as sandbox

    folder = str(Path(sandbox.__file__).parent)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _KERNEL_PROBE, folder, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report = json.loads(done.stdout)
    layers, found = report["layers"], report["found"]
    if layers["landlock"] >= 1:
        assert found["passwd"] == "PermissionError"
        assert found["exec"] == "PermissionError"
    if layers["landlock"] >= 4 or layers["netns"]:
        assert found["socket"] != "allowed"
    if layers["landlock"] >= 6:
        assert found["signal"] == "PermissionError"
    if not any(layers.values()):
        pytest.skip(f"this host offers no kernel isolation layer: {layers}")


def test_python_runs_with_kernel_isolation_by_default() -> None:
    settings = Settings(python_isolation="auto")  # the default (docs/sandbox.md)
    output = execute_code(_ctx("return 1", "python", settings=settings)).output
    sandbox = output["metadata"]["sandbox"]
    assert sandbox["network_namespace"] and sandbox["landlock_abi"] >= 1  # this host has both


@pytest.mark.parametrize(
    ("language", "code", "message"),
    [
        (
            "javascript",
            "const x = 1;\nthrow new Error('bad input')",
            r"failed: Error: bad input \(line 2\)",
        ),
        (
            "python",
            "x = 1\nraise ValueError('bad input')",
            r"failed: ValueError: bad input \(line 2\)",
        ),
    ],
)
def test_exceptions_name_the_line(language: str, code: str, message: str) -> None:
    with pytest.raises(NodeExecutionError, match=message) as caught:
        _run(code, language)
    assert not isinstance(caught.value, NodeConfigurationError)


@pytest.mark.parametrize("language", ["javascript", "python"])
def test_syntax_errors_are_configuration_errors(language: str) -> None:
    with pytest.raises(NodeConfigurationError, match="does not parse"):
        _run("return {" if language == "javascript" else "def (:", language)


def test_limits_are_capped_by_settings() -> None:
    settings = Settings(code=CodeSettings(max_timeout_ms=500, max_memory_mb=32))
    output = execute_code(
        _ctx("return 1", settings=settings, timeout_ms=90_000, memory_mb=4096)
    ).output
    assert output["metadata"]["timeoutMs"] == 500
    assert output["metadata"]["memoryMb"] == 32


def test_python_can_be_disabled() -> None:
    settings = Settings(code=CodeSettings(python_enabled=False))
    with pytest.raises(NodeConfigurationError, match="disabled"):
        execute_code(_ctx("return 1", "python", settings=settings))


# -- through compiled jobs ---------------------------------------------------------------------


def test_corpus_code_snippets_run_in_a_job() -> None:
    """`input.data.number` (a node id as a global) and `shared.x` (shared memory)."""
    result = run_workflow(
        load_corpus("fixtures/node-patterns--state-memory/createcontextpassingdefinition.json"),
        {"data": {"number": 21}},
    )
    assert result.status == "succeeded"
    assert result.output("process2")["finalResult"]["final"] == 52


def test_corpus_return_value_is_readable_by_reference() -> None:
    result = run_workflow(
        load_corpus("advanced-logic/multi-level-approval-chain.json"),
        {"request": {"amount": 25_000, "title": "laptops"}},
    )
    level = result.output("code-level")["approvalLevel"]
    assert level["level"] == 2 and level["output"]["approvers"] == ["director"]


def test_python_node_in_a_job_and_failure_is_reported() -> None:
    definition = flow(
        [
            node("in", "input", inputName="n"),
            node("py", "code", language="python", code="return {'sq': n * n}", outputVariable="r"),
            node("out", "output", outputName="sq", value="{{r.sq}}"),
            node("bad", "code", language="python", code="return open('/etc/shadow').read()"),
        ],
        [("in", "py"), ("py", "out"), ("in", "bad")],
    )
    result = run_workflow(definition, {"n": 7})
    assert result.outputs == {"sq": 49}
    assert result.nodes["bad"].status == "failed"
    assert "reading '/etc/shadow' is not permitted" in (result.nodes["bad"].error or "")
    assert _children() == []
