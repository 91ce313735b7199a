"""Two hosts on one machine: the platform split the way docs/operations.md ("Two hosts") deploys
it, each host a Linux network namespace that reaches the other processes only over a network.

* services (the root namespace): PostgreSQL and Redis, which listen on loopback only, reached
  through `socat` forwarders bound to the bridge address (10.231.x.1);
* host A (namespace `fm-a-<id>`, 10.231.x.2): `dagster dev` (webserver + daemon, run workers),
  the shared code server and the HTTP API (`flowmaestro api`), which this test calls over the
  bridge;
* host B (namespace `fm-b-<id>`, 10.231.x.3): two `flowmaestro worker` processes on a queue of
  this run.

Each host also has its own hostname (its namespace's name, in a UTS namespace), as two machines
would: Celery names workers after it, and the platform tags each run with its run worker's host.

Dagster's instance storage is in PostgreSQL (the stack renders it from the database URL), so
host B's workers open the same instance from the run's instance reference. tests/test_scale_out.py
is the single-namespace version of these tests; workflows and helpers come from there.

Needs root, `ip` and `socat`: without them the tests skip, or fail when CI is set.
"""

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
from dagster import DagsterInstance

from flowmaestro_dagster.engines.celery import make_celery_app
from flowmaestro_dagster.orchestration.instance_config import render_instance_yaml
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.tags import HOST_TAG
from tests.api.conftest import make_key
from tests.api.e2e import TERMINAL, celery_workers, runs_of, step_statuses, wait_for
from tests.services import (
    PG_ADMIN_URL,
    REDIS_URL,
    DagsterStack,
    free_port,
    migrated_template,
    pg_url,
    require_postgres,
    require_redis,
)
from tests.test_scale_out import EMAIL, FAN_OUT, KILLED, _code, _deployed
from tests.test_scale_out import _stop as stop_worker

NETNS_DIR = Path("/var/run/netns")
# One JSON file per run id: its owner (pid and start time), subnet and forwarders. A network
# whose owner is gone is a leftover of a run that could not clean up (killed pytest, reboot
# aside), and the next run removes it; a live owner's network is another run's, left alone.
STATE_DIR = Path("/run/flowmaestro-multi-host")
OUR_NAMES = re.compile(r"^fm-(?:a|b|br|va|vb)-([0-9a-f]{6})$")
STARTUP_TIMEOUT = 300.0  # `dagster dev`, the code server and the workers on 2 busy cores
# KILLED with a longer step: the kill must land while `slow` runs, however late the poll sees
# it start on a busy machine.
_KILLED_NODES: list[dict[str, Any]] = list(KILLED["nodes"])  # type: ignore[arg-type]
KILLED_LONG = {
    **KILLED,
    "nodes": [
        node
        if node["id"] != "slow"
        else _code("slow", "import time\ntime.sleep(12)\nresult = inputs['n'] * 7", runOn="celery")
        for node in _KILLED_NODES
    ],
}


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"the multi-host test needs network namespaces under CI: {reason}")
    pytest.skip(f"network namespaces unavailable: {reason}")


def require_netns() -> None:
    if sys.platform != "linux":
        _unavailable("not Linux")
    if os.geteuid() != 0:
        _unavailable("not root (creating namespaces, a bridge and veth pairs needs root)")
    for tool in ("ip", "socat", "unshare"):
        if shutil.which(tool) is None:
            _unavailable(f"`{tool}` is not installed")


# -- the network: a bridge in the root namespace, one veth pair per host ------------------------


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks after boot): with the pid, names it uniquely."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _kill_group(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@dataclass
class Network:
    """Host A and host B as namespaces on a bridge; services at the bridge's address."""

    run_id: str
    subnet: int  # the x of 10.231.x.0/24
    forwarders: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def ns_a(self) -> str:
        return f"fm-a-{self.run_id}"

    @property
    def ns_b(self) -> str:
        return f"fm-b-{self.run_id}"

    @property
    def bridge(self) -> str:
        return f"fm-br-{self.run_id}"

    def address(self, last: int) -> str:
        return f"10.231.{self.subnet}.{last}"

    @property
    def services_ip(self) -> str:
        return self.address(1)

    @property
    def host_a_ip(self) -> str:
        return self.address(2)

    @property
    def host_b_ip(self) -> str:
        return self.address(3)

    @property
    def state_file(self) -> Path:
        return STATE_DIR / f"{self.run_id}.json"

    @staticmethod
    def exec_prefix(namespace: str) -> list[str]:
        """Run a command on the host `namespace`: in its network namespace, and in a UTS
        namespace whose hostname is the namespace's name (each `exec`s: the command keeps the
        pid). Its own hostname makes its Celery workers `flowmaestro-w1@fm-b-<id>`: another
        run's `flowmaestro-w1@<this machine>` on the same Redis database would answer the
        broadcasts (inspect, ping) meant for this run's."""
        become = 'echo "$0" > /proc/sys/kernel/hostname && exec "$@"'
        return ["ip", "netns", "exec", namespace, "unshare", "--uts", "sh", "-c", become, namespace]

    def write_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {
            "owner": os.getpid(),
            "owner_start": _start_time(os.getpid()),
            "subnet": self.subnet,
            "forwarders": [p.pid for p in self.forwarders],
        }
        self.state_file.write_text(json.dumps(state))

    def create(self) -> None:
        """The state file first (so a crash from here on leaves a leftover the next run
        recognises), then the bridge with the services' address and a veth pair per host."""
        self.write_state()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.services_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for host, namespace, address in (
            ("a", self.ns_a, self.host_a_ip),
            ("b", self.ns_b, self.host_b_ip),
        ):
            outside, inside = f"fm-v{host}-{self.run_id}", f"fm-p{host}-{self.run_id}"
            _ip("netns", "add", namespace)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", namespace)
            _ip("link", "set", outside, "master", self.bridge)
            _ip("link", "set", outside, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", inside)
            _ip("-n", namespace, "link", "set", inside, "up")

    def forward(self, port: int, target_host: str, target_port: int) -> str:
        """A socat forwarder on the bridge address to a loopback-only service; `ip:port`."""
        process = subprocess.Popen(
            [
                "socat",
                f"TCP-LISTEN:{port},bind={self.services_ip},reuseaddr,fork",
                f"TCP:{target_host}:{target_port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its group: the connections it forked go with it
        )
        self.forwarders.append(process)
        self.write_state()

        def listening() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"socat for port {port} exited with {process.returncode}")
            with socket.socket() as sock:
                sock.settimeout(1)
                return sock.connect_ex((self.services_ip, port)) == 0

        wait_for(listening, timeout=30, interval=0.1)
        return f"{self.services_ip}:{port}"

    def destroy(self) -> None:
        for process in self.forwarders:
            _kill_group(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        _teardown(self.run_id, [])
        self.forwarders = []


def _teardown(run_id: str, forwarder_pids: list[int]) -> None:
    """Everything of `run_id`, whatever exists of it: processes left in its namespaces, its
    forwarders, links and namespaces, its state file."""
    for host in ("a", "b"):
        namespace = f"fm-{host}-{run_id}"
        for left in _ip("netns", "pids", namespace, check=False).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(left), signal.SIGKILL)
    for pid in forwarder_pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"socat\0"):
                _kill_group(pid)
    for link in (f"fm-va-{run_id}", f"fm-vb-{run_id}", f"fm-br-{run_id}"):
        _ip("link", "del", link, check=False)
    for host in ("a", "b"):
        _ip("netns", "del", f"fm-{host}-{run_id}", check=False)
    (STATE_DIR / f"{run_id}.json").unlink(missing_ok=True)


def remove_leftovers() -> None:
    """Networks of earlier runs whose pytest is gone (killed before its `finally`)."""
    run_ids = {
        match.group(1)
        for line in _ip("netns", "list").splitlines() + _ip("-o", "link", "show").splitlines()
        for name in re.findall(r"^(?:\d+: )?([^\s:@]+)", line)
        if (match := OUR_NAMES.match(name))
    }
    run_ids |= {path.stem for path in STATE_DIR.glob("*.json")} if STATE_DIR.exists() else set()
    for run_id in sorted(run_ids):
        state: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((STATE_DIR / f"{run_id}.json").read_text())
        owner = state.get("owner")
        if isinstance(owner, int) and _start_time(owner) == state.get("owner_start"):
            continue  # a run in progress
        _teardown(run_id, [int(pid) for pid in state.get("forwarders", [])])


def new_network() -> Network:
    """A run id and a 10.231.x.0/24 no interface here uses, nor a live run's state names."""
    taken = set(re.findall(r"inet 10\.231\.(\d+)\.", _ip("-4", "-o", "addr", "show")))
    for path in STATE_DIR.glob("*.json") if STATE_DIR.exists() else []:
        with contextlib.suppress(OSError, ValueError):
            taken.add(str(json.loads(path.read_text())["subnet"]))
    free = [x for x in range(256) if str(x) not in taken]
    if not free:
        raise RuntimeError("every 10.231.x.0/24 is in use")
    return Network(uuid.uuid4().hex[:6], random.choice(free))


# -- the hosts -------------------------------------------------------------------------------------


@dataclass
class TwoHosts:
    network: Network
    stack: DagsterStack  # host A: dagster dev + code server
    api: subprocess.Popen[bytes]  # host A
    api_url: str  # over the bridge
    http: httpx.Client
    auth: dict[str, str]
    instance: DagsterInstance  # Dagster's storage in PostgreSQL, read from the services side
    workers: dict[str, subprocess.Popen[bytes]]  # host B: hostname -> process
    queue: str
    workflows: dict[str, str]  # name -> id


def _host_env(**values: str) -> dict[str, str]:
    """A host's environment: this process's, less every FLOWMAESTRO_/DAGSTER_ setting, plus
    `values` (what the deployment's doc lists for the host)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWMAESTRO_", "DAGSTER_"))}
    return {**env, **values}


def _start_worker(
    network: Network, name: str, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    flowmaestro = Path(sys.executable).with_name("flowmaestro")
    command = [str(flowmaestro), "worker", "--name", name, "--concurrency", "1"]
    return subprocess.Popen(
        [*network.exec_prefix(network.ns_b), *command, "--loglevel", "INFO"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: SIGKILL takes the pool child and the sandbox too
    )


def _start_api(
    network: Network, stack: DagsterStack, port: int, log: Path
) -> subprocess.Popen[bytes]:
    flowmaestro = Path(sys.executable).with_name("flowmaestro")
    command = [str(flowmaestro), "api", "--host", network.host_a_ip, "--port", str(port)]
    return subprocess.Popen(
        [*network.exec_prefix(network.ns_a), *command, "--log-level", "warning"],
        env=stack.env(),  # DAGSTER_HOME, the database and the webserver's GraphQL URL on host A
        stdin=subprocess.DEVNULL,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop_api(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        _kill_group(process.pid, signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.wait(timeout=10)


def _wait_api(http: httpx.Client, process: subprocess.Popen[bytes], log: Path) -> None:
    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited: {log.read_text()[-3000:]}")
        try:
            return http.get("/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=STARTUP_TIMEOUT, interval=0.5)


def _host_url(url: str, host: str, port: int) -> str:
    return sa.make_url(url).set(host=host, port=port).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoHosts]:
    require_netns()
    require_postgres()
    require_redis()
    remove_leftovers()
    workdir = tmp_path_factory.mktemp("multi-host")
    network = new_network()
    try:
        try:
            network.create()
        except RuntimeError as exc:
            _unavailable(str(exc))
        pg = sa.make_url(PG_ADMIN_URL)
        pg_port = pg.port or 5432
        network.forward(pg_port, pg.host or "127.0.0.1", pg_port)
        redis = urlsplit(REDIS_URL)
        redis_port = redis.port or 6379
        network.forward(redis_port, redis.hostname or "127.0.0.1", redis_port)
        # Every host names the services by the bridge address, never 127.0.0.1.
        redis_url = f"redis://{network.services_ip}:{redis_port}{redis.path or '/0'}"
        queue = f"fm-test-{uuid.uuid4().hex[:10]}"
        celery_env = {
            "FLOWMAESTRO_CELERY_BROKER_URL": redis_url,
            "FLOWMAESTRO_CELERY_QUEUE": queue,
            "FLOWMAESTRO_CELERY_CHECK_SECONDS": "1",
        }
        with migrated_template("postgres", workdir) as database:
            url = _host_url(pg_url(database), network.services_ip, pg_port)
            workflows = _deployed(url, {"fan_out": FAN_OUT, "killed": KILLED_LONG})
            # Host B: its own DAGSTER_HOME whose dagster.yaml names the same PostgreSQL storage
            # (a worker opens the instance its step's run names; the file is for operators).
            home_b = workdir / "host-b"
            home_b.mkdir()
            (home_b / "dagster.yaml").write_text(
                render_instance_yaml(Settings(_env_file=None, database_url=url))
            )
            stack = DagsterStack(
                workdir / "host-a",
                url,
                extra_env=celery_env,
                command_prefix=network.exec_prefix(network.ns_a),
                host=network.host_a_ip,
            )
            env_b = _host_env(
                DAGSTER_HOME=str(home_b),
                FLOWMAESTRO_DATABASE_URL=url,
                # A worker rebuilds a run's job from its shard: the same shards as host A's.
                FLOWMAESTRO_CODE_LOCATION_SHARDS=str(stack.shards),
                **celery_env,
            )
            logs = {name: workdir / f"worker-{name}.log" for name in ("w1", "w2")}
            workers = {name: _start_worker(network, name, env_b, logs[name]) for name in logs}
            api: subprocess.Popen[bytes] | None = None
            try:
                stack.start(timeout=STARTUP_TIMEOUT)
                api_port = free_port()
                api_url = f"http://{network.host_a_ip}:{api_port}"
                api = _start_api(network, stack, api_port, workdir / "api.log")
                app = make_celery_app(broker_url=redis_url, backend_url=redis_url, queue=queue)

                def consuming() -> dict[str, subprocess.Popen[bytes]] | None:
                    for name, process in workers.items():
                        if process.poll() is not None:
                            tail = logs[name].read_text()[-3000:]
                            raise RuntimeError(f"worker {name} exited: {tail}")
                    replies = app.control.inspect(timeout=1).active_queues() or {}
                    hostnames = {
                        h for h, qs in replies.items() if any(q["name"] == queue for q in qs)
                    }
                    found = {
                        hostname: process
                        for name, process in workers.items()
                        if (hostname := f"flowmaestro-{name}@{network.ns_b}") in hostnames
                    }
                    return found if len(found) == 2 else None

                try:
                    by_host = wait_for(consuming, timeout=STARTUP_TIMEOUT, interval=1)
                finally:
                    app.close()
                with httpx.Client(base_url=api_url, trust_env=False, timeout=60) as http:
                    _wait_api(http, api, workdir / "api.log")
                    instance = stack.instance()
                    try:
                        yield TwoHosts(
                            network,
                            stack,
                            api,
                            api_url,
                            http,
                            make_key(url, EMAIL),
                            instance,
                            by_host,
                            queue,
                            workflows,
                        )
                    finally:
                        instance.dispose()
            finally:
                if api is not None:
                    _stop_api(api)
                for process in workers.values():
                    stop_worker(process)
                stack.stop()
    finally:
        network.destroy()


# -- through the API on host A ---------------------------------------------------------------------


def _start(hosts: TwoHosts, workflow: str, inputs: dict[str, Any]) -> str:
    response = hosts.http.post(
        f"/workflows/{hosts.workflows[workflow]}/executions",
        json={"inputs": inputs},
        headers=hosts.auth,
    )
    assert response.status_code == 201, response.text
    execution_id: str = response.json()["id"]
    return execution_id


def _finished(hosts: TwoHosts, execution_id: str, timeout: float = 180) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        response = hosts.http.get(f"/executions/{execution_id}", headers=hosts.auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["status"] in TERMINAL else None

    result: dict[str, Any] = wait_for(done, timeout=timeout, interval=0.5)
    return result


def _runs(hosts: TwoHosts, execution_id: str) -> list[Any]:
    runs = runs_of(hosts.instance, execution_id)
    return sorted(runs, key=lambda run: int(run.tags.get("dagster/retry_number", "0")))


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.netns
@pytest.mark.timeout(900)  # the module's stack starts in the first test's budget
def test_celery_steps_run_on_the_worker_host(hosts: TwoHosts) -> None:
    network = hosts.network
    ns_a, ns_b = (os.stat(NETNS_DIR / ns).st_ino for ns in (network.ns_a, network.ns_b))
    assert ns_a != ns_b and _netns_inode(os.getpid()) not in (ns_a, ns_b)
    # Host A: Dagster, the code server and the API; host B: the workers.
    assert hosts.stack.process is not None and hosts.stack.code_server_process is not None
    for process in (hosts.stack.process, hosts.stack.code_server_process, hosts.api):
        assert _netns_inode(process.pid) == ns_a
    for process in hosts.workers.values():
        assert _netns_inode(process.pid) == ns_b
    # Celery names a worker after its host: `flowmaestro-<name>@<host B's hostname>`.
    assert set(hosts.workers) == {f"flowmaestro-{w}@{network.ns_b}" for w in ("w1", "w2")}

    execution_id = _start(hosts, "fan_out", {"n": 5})
    execution = _finished(hosts, execution_id)
    assert execution["status"] == "succeeded", execution
    assert execution["outputs"] == {"result": "5-10-15-50"}
    (run,) = _runs(hosts, execution_id)
    assert run.tags[HOST_TAG] == network.ns_a  # the run process: on host A
    workers = celery_workers(hosts.instance, run.run_id)
    assert set(workers) == {"c1", "c2", "c3"}  # `local` (runOn) and input/output stayed on A
    assert set(workers.values()) == set(hosts.workers)  # both workers of host B served steps


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.netns
@pytest.mark.timeout(900)  # and the module's teardown in the last one's
def test_a_worker_killed_mid_step_the_step_finishes_on_the_other(hosts: TwoHosts) -> None:
    execution_id = _start(hosts, "killed", {"n": 3})
    run = wait_for(lambda: next(iter(_runs(hosts, execution_id)), None), timeout=120)
    worker = wait_for(lambda: celery_workers(hosts.instance, run.run_id).get("slow"), timeout=120)
    victim = hosts.workers.pop(worker)
    assert _netns_inode(victim.pid) == os.stat(NETNS_DIR / hosts.network.ns_b).st_ino
    os.killpg(victim.pid, signal.SIGKILL)  # the worker, its pool child and the sandbox
    victim.wait(timeout=30)
    # The failed run is FAILURE a moment before Dagster tags it `will_retry`: wait for the retry.
    wait_for(lambda: len(_runs(hosts, execution_id)) == 2, timeout=180)
    execution = _finished(hosts, execution_id, timeout=180)
    assert execution["status"] == "succeeded", execution
    assert execution["outputs"] == {"result": "4/21"}
    first, retry = _runs(hosts, execution_id)
    assert retry.parent_run_id == first.run_id
    assert first.tags[HOST_TAG] == retry.tags[HOST_TAG] == hosts.network.ns_a
    failure = hosts.instance.get_run_by_id(first.run_id)
    assert failure is not None and failure.tags.get("dagster/failure_reason") == "RUN_EXCEPTION"
    killed = step_statuses(hosts.instance, first.run_id)
    assert killed["first"] == "SUCCESS" and killed.get("slow") != "SUCCESS"  # killed mid-step
    stats = step_statuses(hosts.instance, retry.run_id)
    assert "first" not in stats and "in" not in stats  # finished nodes are not re-run
    assert stats["slow"] == "SUCCESS" and stats["out"] == "SUCCESS"
    (survivor,) = hosts.workers
    assert celery_workers(hosts.instance, retry.run_id)["slow"] == survivor
