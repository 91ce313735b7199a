"""The shared code server (orchestration/code_server.py): every deployed-workflow location served
from one process, a reload rebuilding only its shard, in place, and compiling only new versions.

The server runs in this process on unix sockets; the client is Dagster's own, as the webserver
and the daemon use it (`GrpcServerCodeLocationOrigin`: ReloadCode, then a fresh location that
lists the repository and fetches every job's snapshot).
"""

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance
from dagster._core.errors import DagsterUserCodeProcessError
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
from dagster._core.remote_representation.code_location import GrpcServerCodeLocation
from sqlalchemy.orm import Session

from flowmaestro_dagster import definitions
from flowmaestro_dagster.compile.naming import unique_aliases
from flowmaestro_dagster.control.workflows import (
    get_version,
    location_for,
    mark_deployed,
    update_workflow,
)
from flowmaestro_dagster.dagster_internals import DagsterApiServer
from flowmaestro_dagster.engines import jobs as engine_jobs
from flowmaestro_dagster.orchestration.code_server import SharedCodeServer, start_code_server
from flowmaestro_dagster.orchestration.workspace import (
    SHARD_LOCATION,
    CodeServerAddress,
    code_server_dir,
    render_workspace,
)
from flowmaestro_dagster.settings import get_settings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import User, Workflow
from tests.builders import chain, node
from tests.deploy import deploy, fresh_user

REPOSITORY = "__repository__"


def greeter(name: str) -> dict[str, Any]:
    return chain(
        node("who", "input", inputName="who"),
        node("say", "output", outputName="greeting", value="hi {{who}}"),
        name=name,
    )


class Served:
    """The code server of a test, on the test's platform database, and a client for it."""

    def __init__(self, url: str, address: CodeServerAddress, shards: int) -> None:
        self.url, self.address, self.shards = url, address, shards
        self.instance = DagsterInstance.ephemeral()
        self.server: SharedCodeServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.server = start_code_server(self.address, self.shards, threads=4)
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.stop()
            self.thread.join(timeout=30)
        self.instance.dispose()

    def origin(self, shard: int = 0) -> GrpcServerCodeLocationOrigin:
        socket, _ = self.address.endpoint(shard)
        return GrpcServerCodeLocationOrigin(
            host="localhost", socket=str(socket), location_name=SHARD_LOCATION.format(shard)
        )

    def location(self, shard: int = 0) -> GrpcServerCodeLocation:
        """What the webserver's watcher does: the location fetched again, no reload."""
        return self.origin(shard).create_location(self.instance)

    def reload(self, shard: int = 0) -> GrpcServerCodeLocation:
        """What the webserver's reloadRepositoryLocation does: ReloadCode, then a new location."""
        return self.origin(shard).reload_location(self.instance)

    def jobs(self, location: GrpcServerCodeLocation) -> set[str]:
        return {job.name for job in location.get_repository(REPOSITORY).get_all_jobs()}

    def deploy(self, name: str, definition: dict[str, Any] | None = None) -> tuple[str, str]:
        """A new workflow deployed in the database only: (workflow id, job name)."""
        with session_scope(get_engine(self.url)) as session:
            user = fresh_user(session)
            workflow_id = deploy(session, user, definition or greeter(name), name=name)
            session.commit()
            return workflow_id, job_name(self.url, workflow_id)


def job_name(url: str, workflow_id: str) -> str:
    with session_scope(get_engine(url)) as session:
        workflow = session.get(Workflow, workflow_id)
        assert workflow is not None and workflow.deployed_version is not None
        return get_version(session, workflow=workflow, version=workflow.deployed_version).job_name


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The job names the code server compiles, in order."""
    built: list[str] = []
    original: Callable[..., Any] = engine_jobs.build_job

    def counting(definition: Any, **options: Any) -> Any:
        built.append(options["job_name"])
        return original(definition, **options)

    monkeypatch.setattr(engine_jobs, "build_job", counting)
    return built


@pytest.fixture
def served(
    platform_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Served]:
    shards = getattr(request, "param", 1)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("FLOWMAESTRO_DATABASE_URL", platform_db)
    monkeypatch.setenv("FLOWMAESTRO_CODE_LOCATION_SHARDS", str(shards))
    get_settings.cache_clear()
    definitions._built_jobs.clear()
    found = Served(
        platform_db, CodeServerAddress(socket_dir=code_server_dir(tmp_path / "s")), shards
    )
    try:
        yield found
    finally:
        found.stop()
        definitions._built_jobs.clear()
        get_settings.cache_clear()


# -- reloads -----------------------------------------------------------------------------------


def test_a_reload_serves_the_new_version_and_compiles_only_it(
    served: Served, builds: list[str]
) -> None:
    _, first = served.deploy("first")
    _, second = served.deploy("second")
    served.start()
    assert served.jobs(served.location()) == {first, second}
    assert sorted(builds) == sorted([first, second])

    _, third = served.deploy("third")
    assert served.jobs(served.location()) == {first, second}  # not reloaded yet
    reloaded = served.reload()

    assert served.jobs(reloaded) == {first, second, third}
    assert builds[2:] == [third]  # the other two were built once, at start
    assert served.jobs(served.location()) == {first, second, third}


def test_the_new_server_id_is_announced_once_the_reload_was_fetched(served: Served) -> None:
    """The webserver and the daemon fetch a location again when its server id changes: not
    while the webserver is still fetching the reload it asked for."""
    served.deploy("first")
    served.start()
    client = served.origin().create_client()
    before = client.get_server_id()

    client.reload_code(timeout=60)
    assert client.get_server_id() == before  # repository swapped, id not announced yet
    served.location()  # the reloading client lists the repository and fetches every job
    after = client.get_server_id()

    assert after != before
    served.location()  # the watchers' fetches change nothing more
    assert client.get_server_id() == after


def test_a_reload_of_an_empty_location_announces_its_id_at_once(served: Served) -> None:
    served.start()
    client = served.origin().create_client()
    before = client.get_server_id()
    client.reload_code(timeout=60)
    assert client.get_server_id() != before


def test_a_job_snapshot_is_serialized_once_for_every_client_that_fetches_it(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webserver's watcher and the daemon fetch every job again after each reload, and the
    daemon every location every minute: each job's snapshot is serialized once."""
    serialized: list[str] = []
    original = DagsterApiServer.ExternalJob

    def counting(self: Any, request: Any, context: Any) -> Any:
        serialized.append(request.job_name)
        return original(self, request, context)

    monkeypatch.setattr(DagsterApiServer, "ExternalJob", counting)
    _, first = served.deploy("first")
    _, second = served.deploy("second")
    served.start()
    fresh = served.location().get_repository(REPOSITORY).get_full_job(first)
    again = served.location().get_repository(REPOSITORY).get_full_job(first)
    assert sorted(serialized) == sorted([first, second])
    assert again.job_snapshot.snapshot_id == fresh.job_snapshot.snapshot_id

    _, third = served.deploy("third")
    served.reload()
    served.location()
    assert sorted(serialized) == sorted([first, second, third])


def test_a_version_that_leaves_the_shard_leaves_the_location_and_the_cache(
    served: Served, builds: list[str]
) -> None:
    workflow_id, first = served.deploy("evolving")
    served.start()
    with session_scope(get_engine(served.url)) as session:
        user = session.get(User, get_workflow_owner(session, workflow_id))
        assert user is not None
        update_workflow(
            session,
            user=user,
            workflow_id=workflow_id,
            definition=greeter("evolving v2"),
            name=None,
            description=None,
            settings=None,
        )
        mark_deployed(session, user=user, workflow_id=workflow_id, version=2)
        session.commit()
    second = job_name(served.url, workflow_id)

    reloaded = served.reload()

    assert served.jobs(reloaded) == {second}  # no execution runs on version 1 any more
    assert set(definitions._built_jobs[0]) == {second}
    assert builds == [first, second]


def get_workflow_owner(session: Session, workflow_id: str) -> str:
    workflow = session.get(Workflow, workflow_id)
    assert workflow is not None
    return workflow.owner_id


def test_a_failed_reload_shows_the_error_and_the_next_one_recovers(
    served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, first = served.deploy("first")
    served.start()
    garbage = tmp_path / "not-a-database.db"
    garbage.write_bytes(b"x" * 4096)
    monkeypatch.setenv("FLOWMAESTRO_DATABASE_URL", f"sqlite:///{garbage}")
    get_settings.cache_clear()
    with pytest.raises(DagsterUserCodeProcessError, match="file is not a database"):
        served.reload()

    monkeypatch.setenv("FLOWMAESTRO_DATABASE_URL", served.url)
    get_settings.cache_clear()
    assert served.jobs(served.reload()) == {first}


@pytest.mark.parametrize("served", [2], indirect=True)
def test_each_location_serves_its_own_shard_from_one_process(served: Served) -> None:
    deployed = dict(served.deploy(f"workflow {i}") for i in range(6))
    served.start()
    for shard in range(2):
        expected = {
            name
            for workflow_id, name in deployed.items()
            if location_for(workflow_id, 2) == SHARD_LOCATION.format(shard)
        }
        assert served.jobs(served.reload(shard)) == expected


def test_each_workflow_is_its_own_job_with_ops_named_after_its_nodes(served: Served) -> None:
    definition = chain(
        node("Customer Name", "input", inputName="who"),
        node("greeting-out", "output", outputName="greeting", value="hi {{who}}"),
        name="Readable",
    )
    _, name = served.deploy("Readable", definition)
    served.start()

    job = served.location().get_repository(REPOSITORY).get_full_job(name)

    assert name.startswith("readable__")
    ops = {n.node_name for n in job.job_snapshot.dep_structure_snapshot.node_invocation_snaps}
    assert ops == set(unique_aliases(["Customer Name", "greeting-out"]).values())


# -- the workspace -----------------------------------------------------------------------------


def test_the_workspace_points_the_shard_locations_at_the_shared_code_server() -> None:
    text = render_workspace(2, "# test", code_server=CodeServerAddress(socket_dir=Path("/s")))
    assert text.count("python_module:") == 2  # examples and the platform sensors
    assert "      socket: /s/shard-0.sock\n      location_name: flowmaestro-workflows-0" in text
    assert "      socket: /s/shard-1.sock\n      location_name: flowmaestro-workflows-1" in text
    assert "attribute: shard_" not in text

    ports = render_workspace(2, examples=False, code_server=CodeServerAddress(port=4200))
    assert (
        "      host: 127.0.0.1\n      port: 4201\n      location_name: flowmaestro-workflows-1"
        in (ports)
    )


def test_per_location_code_servers_load_the_shard_attributes() -> None:
    text = render_workspace(2, examples=False)
    assert "grpc_server" not in text
    assert "      attribute: shard_1\n      location_name: flowmaestro-workflows-1" in text


def test_socket_paths_that_would_be_too_long_get_a_short_directory(tmp_path: Path) -> None:
    assert code_server_dir(tmp_path / "s") == tmp_path / "s"
    long = tmp_path / ("x" * 120)
    short = code_server_dir(long)
    assert short != long and len(str(short / "shard-255.sock")) < 108


def test_a_definition_changed_under_the_same_job_name_is_built_again(
    served: Served, builds: list[str]
) -> None:
    """A version's definition never changes; the cache checks it anyway (by digest)."""
    workflow_id, name = served.deploy("guarded")
    served.start()
    with session_scope(get_engine(served.url)) as session:
        workflow = session.get(Workflow, workflow_id)
        assert workflow is not None
        version = get_version(session, workflow=workflow, version=1)
        version.definition = greeter("guarded, edited in place")
        session.commit()

    served.reload()

    assert builds == [name, name]


def test_the_command_refuses_no_locations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flowmaestro_dagster.cli import EXIT_USAGE, main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["code-server", "--shards", "0"]) == EXIT_USAGE
    assert "--shards must be 1 or more" in capsys.readouterr().err
