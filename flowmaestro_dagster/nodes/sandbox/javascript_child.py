"""The child side of the JavaScript code sandbox (docs/sandbox.md, "JavaScript").

`javascript.run_javascript` starts `python -I -S -B -u -X utf8 -c <this file>` through the
Python sandbox's launcher (`python.run_child`): in mode `auto` inside bubblewrap when the host
has it, with a read-only view of the interpreter, the standard library, the system libraries,
the mini-racer package and the few platform modules named in `javascript.CHILD_MODULES`
(nothing else of the repository, `DAGSTER_HOME` or the worker's environment). With one JSON
request on stdin and a result descriptor, this script:

1. imports what the run needs while it can still read it: mini-racer's Python modules (V8 is
   loaded and started later, after step 2, so that every thread it makes inherits the
   restrictions; Landlock and seccomp hold only for threads made after them) and the sandbox's
   `javascript.py` with `lang/js.py` (`flowmaestro_dagster` and `flowmaestro_dagster.nodes`
   are bare packages here: their `__init__`s name or import every executor);
2. closes the doors with `python_child.py`'s own layers, as for a Python snippet: inherited
   descriptors closed; without bubblewrap its own namespaces; as root a uid of its own;
   Landlock (read-only the standard library, system libraries and the mini-racer package);
   no capabilities; the seccomp filter; CPU, process (threads), open-file and file-size limits.
   Mode `auto` refuses to run where files, the network or processes are unguarded;
3. runs the snippet with `javascript.run_in_isolate`, which keeps V8's own limits (heap, time,
   no typed arrays or timers, the Intl cap). Once the isolate exists it sets RLIMIT_DATA: what
   the process has then, plus twice the snippet's `memory` and 64 MB. RLIMIT_AS cannot bound
   V8: it reserves about 1.4 TB of address space when it starts (its sandbox and pointer
   cage) and commits the heap inside that reservation, which the address space does not count
   again; the data segment counts what is made writable;
4. writes the `SnippetResult` as JSON to the result descriptor.
"""

import json
import os
import sys
from types import ModuleType


def _bootstrap(root: str, site: str) -> tuple[ModuleType, ModuleType]:
    """Import `javascript.py` and `python_child.py` from `root` and mini-racer from `site`; then
    sys.path is the standard library's again (Landlock's read rules come from it)."""
    standard = list(sys.path)
    sys.path[:] = [*standard, root, site]
    # The platform's package and `flowmaestro_dagster.nodes` without their `__init__`s (which
    # name, or import, every executor); their modules below load from `root` as usual.
    parent = None
    for name in ("flowmaestro_dagster", "flowmaestro_dagster.nodes"):
        package = ModuleType(name)
        package.__path__ = [os.path.join(root, *name.split("."))]
        sys.modules[name] = package
        if parent is not None:
            setattr(parent, name.rsplit(".", 1)[1], package)
        parent = package
    import py_mini_racer  # noqa: F401  (Python modules only: V8 starts with the isolate)

    from flowmaestro_dagster.nodes.sandbox import javascript, python_child

    sys.path[:] = standard
    return javascript, python_child


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    javascript, box = _bootstrap(request["root"], request["site"])
    import resource

    from flowmaestro_dagster.nodes.sandbox import SnippetInputs

    result_fd = int(request["result_fd"])
    info_fd = request.get("info_fd")
    box._close_descriptors(
        {0, 1, 2, result_fd} | ({int(info_fd)} if info_fd is not None else set())
    )
    isolation = box._isolate(request)
    status = isolation.pop("_status")
    isolation.pop("_read_dirs")
    isolation["audit_hook"] = False
    memory_mb = int(request["memory_mb"])
    isolation.update(engine="v8", heap_limit_mb=memory_mb)
    envelope: dict = {"isolation": isolation}
    missing = box._missing_barriers(isolation)
    if isolation["mode"] == "auto" and missing:
        message = box.refusal("JavaScript", missing, request.get("bubblewrap_error"))
        envelope["error"] = {"kind": "unavailable", "message": message, "type": None}
        box._write(result_fd, envelope)
        return
    box._set_limits(request, status, isolation["process_limit"], address_space=False)

    def limit_data() -> None:
        """RLIMIT_DATA once the isolate (and V8's 512 MB code range) exists."""
        budget = 2 * memory_mb * 1024 * 1024 + int(request["data_headroom_bytes"])
        value = box._vm_size(status, "VmData") + budget
        _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (value, value))
        isolation["data_limit_mb"] = value >> 20
        os.close(status)

    data = json.loads(request["inputs"])
    try:
        result = javascript.run_in_isolate(
            request["code"],
            SnippetInputs(data["names"], data["shared"], tuple(data["globals"])),
            timeout_s=float(request["timeout_s"]),
            memory_mb=memory_mb,
            max_output_chars=int(request["max_output_chars"]),
            max_result_chars=int(request["max_result_chars"]),
            on_isolate=limit_data,
        )
    except MemoryError:  # the harness, past RLIMIT_DATA (a huge value turned into Python)
        envelope["error"] = {
            "kind": "memory",
            "message": f"the JavaScript snippet exceeded its memory limit ({memory_mb} MB)",
        }
        box._write(result_fd, envelope)
        return
    error = result.error
    envelope.update(
        output=result.output,
        stdout=result.stdout,
        stderr=result.stderr,
        error=None
        if error is None
        else {
            "kind": error.kind,
            "message": error.message,
            "type": error.type,
            "line": error.line,
            "traceback": error.traceback,
        },
        duration_ms=result.duration_ms,
        truncated=result.truncated,
    )
    box._write(result_fd, envelope)


if __name__ == "__main__":
    main()
