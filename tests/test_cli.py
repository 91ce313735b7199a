"""`flowmaestro validate` and `flowmaestro run`: output, exit codes, clear messages."""

import json
from pathlib import Path

import pytest

from flowmaestro_api.cli import main
from tests.conftest import CORPUS, flow


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
