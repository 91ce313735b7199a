"""The run worker's Dagster instance is built once, in the launcher's forkserver."""

import json
import subprocess
import sys
from pathlib import Path

from flowmaestro_dagster.orchestration.instance_config import render_instance_yaml
from flowmaestro_dagster.settings import Settings

PROBE = """
import json, sys
from dagster._core.instance.ref import InstanceRef
from flowmaestro_dagster.engines import warm_instance

warm, ref = warm_instance._warm
other = warm_instance.instance_for(InstanceRef.from_dir(sys.argv[1]))
print(json.dumps({
    "built": warm is not None,
    "index_ready": "index" in warm.event_log_storage._initialized_dbs,
    "same_ref_reused": warm_instance.instance_for(ref) is warm,
    "other_ref_new": other is not warm and other.root_directory == sys.argv[1],
    "logs": [type(i.compute_log_manager).__name__ for i in (warm, other)],
}))
"""


def _home(path: Path) -> Path:
    path.mkdir()
    settings = Settings(_env_file=None, database_url=f"sqlite:///{path / 'p.db'}")
    (path / "dagster.yaml").write_text(render_instance_yaml(settings))
    return path


def test_importing_builds_the_instance_a_run_of_that_instance_reuses(tmp_path: Path) -> None:
    home, other = _home(tmp_path / "home"), _home(tmp_path / "other")
    found = subprocess.run(
        [sys.executable, "-c", PROBE, str(other)],
        env={"DAGSTER_HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(found.stdout.strip().splitlines()[-1]) == {
        "built": True,
        "index_ready": True,  # the event index's schema check is done before any fork
        "same_ref_reused": True,
        "other_ref_new": True,
        "logs": ["MirroredComputeLogManager"] * 2,  # output captured without helper processes
    }


def test_without_a_home_nothing_is_built_and_each_run_builds_its_own(tmp_path: Path) -> None:
    home = _home(tmp_path / "home")
    probe = (
        "from flowmaestro_dagster.engines import warm_instance as w\n"
        "from dagster._core.instance.ref import InstanceRef\n"
        f"print(w._warm is None, w.instance_for(InstanceRef.from_dir({str(home)!r})) is not None)"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert found.stdout.split() == ["True", "True"]


MIRROR = """
import os, subprocess, sys
from flowmaestro_dagster.engines.compute_logs import mirrored

print("before", flush=True)
with mirrored(sys.stdout, sys.argv[1]):
    print("from python", flush=True)
    pid = os.getpid()
    print("children:" + open(f"/proc/{pid}/task/{pid}/children").read(), file=sys.stderr)
    os.write(1, b"from the descriptor\\n")
    subprocess.run(["echo", "from a child"], check=True)
print("after", flush=True)
"""


def test_captured_output_lands_in_the_file_and_on_the_original_stream(tmp_path: Path) -> None:
    log = tmp_path / "run" / "compute.out"
    found = subprocess.run(
        [sys.executable, "-c", MIRROR, str(log)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    captured = ["from python", "from the descriptor", "from a child"]
    assert log.read_text().splitlines() == captured
    assert found.stdout.splitlines() == ["before", *captured, "after"]  # all, in order
    assert found.stderr.strip() == "children:"  # no tail or watcher process while capturing
