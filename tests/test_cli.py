"""`flowmaestro validate`, `run` and `dev`: output, exit codes, clear messages, a quiet dev start."""

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flowmaestro_api import cli
from flowmaestro_api.cli import main
from tests.conftest import CORPUS, flow

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, name: str, content: object) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


GOOD = flow(
    [
        {"id": "in", "type": "input", "inputName": "who", "defaultValue": "world"},
        {"id": "out", "type": "output", "outputName": "greeting", "value": "hello {{who}}"},
    ],
    [("in", "out")],
    name="Greeter",
)


def test_validate_json_lines_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "good.json", GOOD)
    write(tmp_path, "bad.json", '{"nodes": [')
    write(
        tmp_path,
        "cycle.json",
        flow(
            [
                {"id": "a", "type": "transform", "operation": "passthrough"},
                {"id": "b", "type": "transform", "operation": "passthrough"},
            ],
            [("a", "b"), ("b", "a")],
        ),
    )
    assert main(["validate", "--json", str(tmp_path)]) == 1
    records = {
        Path(r["file"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())
    }
    assert set(records) == {"good.json", "bad.json", "cycle.json"}
    good = records["good.json"]
    assert good["ok"] is True and good["job"] == "greeter" and good["ops"] == 2
    assert good["errors"] == [] and good["warnings"] == []
    assert records["bad.json"]["errors"][0]["code"] == "malformed_json"
    assert records["cycle.json"]["errors"][0]["code"] == "cycle"
    for record in records.values():
        assert set(record) == {"file", "ok", "job", "ops", "errors", "warnings"}


def test_validate_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "good.json", GOOD)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "job=greeter" in out and "1 of 1 workflow(s) compile" in out


def test_validate_the_corpus_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--json", str(CORPUS)]) == 1  # four definitions have cycles
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(r["ok"] for r in records) == len(records) - 4


def test_validate_missing_path_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "/nonexistent/flow.json"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_run_prints_nodes_and_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    path = write(tmp_path, "good.json", GOOD)
    assert main(["run", str(path), "--inputs", '{"who": "Ada"}', "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "succeeded"
    assert result["outputs"] == {"greeting": "hello Ada"}
    assert result["nodes"]["out"]["status"] == "succeeded"
    # the run is recorded on the local instance
    assert any((tmp_path / "home").rglob("*.db"))


def test_run_rejects_bad_inputs_and_bad_workflows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    good = write(tmp_path, "good.json", GOOD)
    assert main(["run", str(good), "--inputs", "[1]"]) == 2
    assert "--inputs" in capsys.readouterr().err
    bad = write(tmp_path, "bad.json", flow([{"id": "x", "type": "teleport"}], []))
    assert main(["run", str(bad)]) == 2
    assert "unknown node type 'teleport'" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.json")]) == 2


def test_run_exit_code_reflects_a_failed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    failing = write(
        tmp_path,
        "f.json",
        flow(
            [
                {"id": "in", "type": "input", "inputName": "raw"},
                {"id": "p", "type": "transform", "operation": "parseJSON", "inputData": "{{raw}}"},
            ],
            [("in", "p")],
        ),
    )
    assert main(["run", str(failing), "--inputs", '{"raw": "{oops"}']) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "parseJSON" in out


# -- flowmaestro dev: a quiet terminal, one SIGINT per child -------------------------------------


def test_dev_log_level_flag_then_env_then_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.DEV_LOG_LEVEL_ENV, raising=False)
    assert cli.dev_log_level(None) == "warning"
    monkeypatch.setenv(cli.DEV_LOG_LEVEL_ENV, " INFO ")
    assert cli.dev_log_level(None) == "info"
    assert cli.dev_log_level("error") == "error"
    monkeypatch.setenv(cli.DEV_LOG_LEVEL_ENV, "loud")
    with pytest.raises(ValueError, match="'loud' is not one of"):
        cli.dev_log_level(None)


def test_dev_refuses_a_bad_log_level_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(cli.DEV_LOG_LEVEL_ENV, "loud")
    assert main(["dev"]) == 2
    assert cli.DEV_LOG_LEVEL_ENV in capsys.readouterr().err
    assert not (tmp_path / "home").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["dev", "--log-level", "loud"])
    assert exit_info.value.code == 2


def test_dev_commands_pass_the_log_level_to_dagster_and_the_api() -> None:
    dagster, api = cli.dev_commands(
        host="0.0.0.0", port=3001, workspace=Path("/w.yaml"), log_level="warning",
        api_host="127.0.0.1", api_port=8001,
    )  # fmt: skip
    assert dagster[dagster.index("-m") + 1 :][:2] == ["dagster", "dev"]
    assert dagster[dagster.index("--log-level") + 1] == "warning"
    assert dagster[dagster.index("--code-server-log-level") + 1] == "warning"
    assert dagster[dagster.index("-w") + 1] == "/w.yaml" and "3001" in dagster
    assert api[1:] == ["api", "--host", "127.0.0.1", "--port", "8001", "--log-level", "warning"]
    parsed = cli.build_parser().parse_args(api[1:])
    assert parsed.log_level == "warning"


def test_the_dagster_dev_filter_ignores_exactly_its_supersession_warning() -> None:
    """Dagster's own message, with the `-W` option `flowmaestro dev` gives `dagster dev`; when
    Dagster stops warning (or words it differently) this fails and the filter can go."""
    dagster, _ = cli.dev_commands(
        host="h", port=1, workspace=Path("w"), log_level="info", api_host="h", api_port=2
    )
    script = (
        "import json, warnings\n"
        "from dagster._cli.dev import dev_command\n"
        "def caught():\n"
        "    with warnings.catch_warnings(record=True) as seen:\n"
        "        try:\n"
        "            dev_command.callback()  # warns, then fails on the missing arguments\n"
        "        except TypeError:\n"
        "            pass\n"
        "    return [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]\n"
        "filtered = caught()\n"
        "warnings.simplefilter('always')\n"
        "warnings.warn('something else', FutureWarning)\n"
        "print(json.dumps([filtered, caught()]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", dagster[dagster.index("-W") + 1], "-c", script],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    filtered, unfiltered = json.loads(done.stdout)
    assert filtered == []
    assert len(unfiltered) == 1 and "dg dev" in unfiltered[0]
    assert "something else" in done.stderr  # other FutureWarnings still show


class _Unimplemented(http.server.BaseHTTPRequestHandler):
    """Answers every request with 501, quietly."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_probe_urls_and_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.probe_url("0.0.0.0", 3000, "/x") == "http://127.0.0.1:3000/x"
    assert cli.probe_url("::1", 8000, "/docs") == "http://[::1]:8000/docs"
    server = http.server.HTTPServer(("127.0.0.1", 0), _Unimplemented)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # never used for these
        port = server.server_address[1]
        assert cli.answers(f"http://127.0.0.1:{port}/")  # 501 is an answer
    finally:
        server.shutdown()
        server.server_close()
    assert not cli.answers(f"http://127.0.0.1:{port}/")


# A stand-in for `dagster dev` and the API: serves on the port, writes its name to the record
# for every SIGINT, and stops one second after the first.
FAKE_SERVER = """
import http.server, signal, sys, threading
port, record, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
server = http.server.HTTPServer(("127.0.0.1", port), http.server.BaseHTTPRequestHandler)
server.RequestHandlerClass.log_message = lambda *a: None
def interrupted(signum, frame):
    with open(record, "a") as f:
        f.write(name + "\\n")
    threading.Timer(1.0, server.shutdown).start()
signal.signal(signal.SIGINT, interrupted)
server.serve_forever()
"""

FAKE_DEV = """
import sys
import flowmaestro_api.cli as cli
def fake(*, host, port, workspace, log_level, api_host, api_port):
    child = [sys.executable, "-c", sys.argv[1]]
    return [*child, str(port), sys.argv[2], "dagster"], [*child, str(api_port), sys.argv[2], "api"]
cli.dev_commands = fake
sys.exit(cli.main(["dev"]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dev_announces_when_ready_and_ctrl_c_reaches_each_child_once(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group: `flowmaestro dev`
    passes one SIGINT on, and its children (own groups) get no second one from the terminal."""
    record, out = tmp_path / "sigints", tmp_path / "out"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLOWMAESTRO_")},
        "DAGSTER_HOME": str(tmp_path / "home"),
        "FLOWMAESTRO_DATABASE_URL": f"sqlite:///{tmp_path / 'fm.db'}",
        "FLOWMAESTRO_WEBSERVER_PORT": str(_free_port()),
        "FLOWMAESTRO_API_PORT": str(_free_port()),
    }
    with out.open("w") as stdout:
        dev = subprocess.Popen(
            [sys.executable, "-c", FAKE_DEV, FAKE_SERVER, str(record)],
            cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while "Ready." not in out.read_text() and time.monotonic() < deadline:
                assert dev.poll() is None, out.read_text()
                time.sleep(0.2)
            os.killpg(dev.pid, signal.SIGINT)  # what the terminal does
            assert dev.wait(timeout=30) == 0, out.read_text()
        finally:
            if dev.poll() is None:
                os.killpg(dev.pid, signal.SIGKILL)
    text = out.read_text()
    assert text.index("Starting") < text.index("API key:") < text.index("Ready.")
    assert f"{cli.DEV_LOG_LEVEL_ENV}=info" in text and "Stopping" in text
    assert sorted(record.read_text().split()) == ["api", "dagster"]
