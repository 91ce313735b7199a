"""Run workers' stdout/stderr capture without helper processes.

Dagster's local compute-log manager captures a run's output by redirecting the process's
stdout/stderr into the run's log files (what the UI shows) and mirroring each file back to the
original stream with a `tail -F` and a Python watcher process: four processes per running run,
a third of a sleeping run's memory (measured in bench/scale_runs.py) and four process starts
per run. `MirroredComputeLogManager` writes the same files the same way and mirrors them back
from one thread of the run worker instead. Only forkserver run workers use it (their instance
reference is swapped in `run_worker_ref`); every other process keeps the configured manager."""

import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any, Self, TextIO

from flowmaestro_dagster.dagster_internals import (
    IO_TYPE_EXTENSION,
    CapturedLogContext,
    ComputeIOType,
    ConfigurableClassData,
    InstanceRef,
    LocalComputeLogManager,
    redirect_to_file,
)

# Dagster's local compute-log manager, as instance references name it (old and new module).
LOCAL_COMPUTE_LOGS = {
    ("dagster.core.storage.local_compute_log_manager", "LocalComputeLogManager"),
    ("dagster._core.storage.local_compute_log_manager", "LocalComputeLogManager"),
}
POLL_SECONDS = 0.2  # how soon output written by a node shows on the run worker's terminal


class InProcessComputeLogManager(LocalComputeLogManager):
    """Dagster's local compute-log manager, capturing into the same files (what the UI reads)
    without its `tail -F` and watcher processes; `redirect` says what becomes of the original
    stream. File descriptors belong to the process, so only the main thread redirects: steps
    on other threads share the run's streams."""

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> Self:
        # Dagster's builds a LocalComputeLogManager whatever the class it is called on.
        return cls(inst_data=inst_data, **config_value)

    def redirect(self, stream: TextIO, path: str) -> AbstractContextManager[None]:
        raise NotImplementedError

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Iterator[CapturedLogContext]:
        out = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        err = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        for path in (out, err):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).touch()
        with ExitStack() as stack:
            if threading.current_thread() is threading.main_thread():
                stack.enter_context(self.redirect(sys.stdout, out))
                stack.enter_context(self.redirect(sys.stderr, err))
            yield CapturedLogContext(log_key)
        Path(self.complete_artifact_path(log_key)).touch()


class MirroredComputeLogManager(InProcessComputeLogManager):
    """Captured output also goes on to the original stream, copied by a thread (`mirrored`)."""

    def redirect(self, stream: TextIO, path: str) -> AbstractContextManager[None]:
        return mirrored(stream, path)


@contextmanager
def mirrored(stream: TextIO, path: str) -> Iterator[None]:
    """`stream`'s file descriptor redirected into `path` (created if need be) for the block,
    and what lands in the file copied to the stream's original destination by a thread, to
    the last byte."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).touch()
    try:
        original = os.dup(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no real descriptor (tests): file only
        with redirect_to_file(stream, path):
            yield
        return
    done = threading.Event()
    thread = threading.Thread(
        target=_copy, args=(path, original, done), name="compute-log-mirror", daemon=True
    )
    try:
        with redirect_to_file(stream, path):
            thread.start()
            yield
            stream.flush()
    finally:
        done.set()
        if thread.is_alive():
            thread.join(timeout=5)
        os.close(original)


def _copy(path: str, target: int, done: threading.Event) -> None:
    with open(path, "rb") as source:
        while True:
            chunk = source.read(65536)
            if chunk:
                try:
                    _write_all(target, chunk)
                except OSError:  # the terminal went away: the file still has everything
                    return
            elif done.is_set():
                return
            else:
                done.wait(POLL_SECONDS)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def with_compute_logs(ref: InstanceRef, manager: type[LocalComputeLogManager]) -> InstanceRef:
    """`ref` with Dagster's local compute-log manager replaced by `manager`, a subclass (same
    configuration: same files); any other manager is kept."""
    logs = ref.compute_logs_data
    if (logs.module_name, logs.class_name) not in LOCAL_COMPUTE_LOGS:
        return ref
    swapped = ConfigurableClassData(manager.__module__, manager.__name__, logs.config_yaml)
    return ref._replace(compute_logs_data=swapped)


def run_worker_ref(ref: InstanceRef) -> InstanceRef:
    """The instance reference a forkserver run worker opens (mirrored compute logs)."""
    return with_compute_logs(ref, MirroredComputeLogManager)
