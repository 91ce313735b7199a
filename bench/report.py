"""docs/benchmarks.md from one results dict (`python -m bench` writes both).

`render(results)` needs no benchmark to run: tests/test_bench_render.py renders a small fake
results dict covering every section. A section whose figures do not fit its renderer is shown
as a rendering error instead of losing the whole report.
"""

from collections.abc import Callable
from typing import Any

from bench.sections import SECTIONS

Lines = list[str]
Goal = tuple[str, str, str, bool | None]  # measure, result, goal, met (None: not judged)


def span(d: dict[str, Any], unit: str = "s", key: str = "median", digits: int = 3) -> str:
    """`0.712 s [0.61, 0.718]` (median [min, max]) from {"median_s": ..., "min_s": ..., "max_s": ...}."""
    suffix = f"_{unit}" if f"{key}_{unit}" in d else ""

    def get(name: str) -> Any:
        return d.get(f"{name}{suffix}")

    middle, low, high = get(key), get("min"), get("max")
    text = f"{num(round(middle, digits))} {unit}"
    if low is not None and high is not None:
        text += f" [{num(round(low, digits))}, {num(round(high, digits))}]"
    return text


def num(x: Any) -> str:
    """A figure without float noise: 3 decimals at most, no trailing zeros."""
    return f"{round(x, 3):g}" if isinstance(x, float) else str(x)


def met(flag: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "not judged"}[flag]


# -- sections --------------------------------------------------------------------------------


def compile_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    corpus, large = r["corpus_compile"], r["large_compile"]
    lines = [
        "Compiling a definition: JSON → validated spec → Dagster job (no I/O).",
        "",
        "| measure | median | min / max | p95 |",
        "|---|---|---|---|",
        f"| corpus file ({corpus['files']} files, {corpus['rejected']} rejected as cyclic; best "
        f"of {corpus.get('repeats', 3)} per file) | {corpus['p50_ms']} ms | "
        f"{corpus.get('min_ms', 'n/a')} / {corpus['max_ms']} ms | {corpus['p95_ms']} ms |",
        f"| synthetic {large['nodes']}-node workflow ({large['repeats']} compiles) | "
        f"{large['median_s']} s | {large['best_s']} / {large['max_s']} s | |",
    ]
    g = r["goals"]
    goals = [
        (
            "compile, corpus file p95",
            f"{corpus['p95_ms']} ms",
            f"≤ {g['corpus_p95_ms_max']} ms",
            g["corpus_met"],
        ),
        (
            f"compile, {large['nodes']} nodes",
            f"{large['median_s']} s",
            f"≤ {g['large_median_s_max']} s",
            g["large_met"],
        ),
    ]
    return lines, goals


OVERHEAD_LABELS = {
    "compiled_threaded": "compiled workflow, threaded executor (deployed default)",
    "compiled_in_process": "compiled workflow, in-process executor",
    "hand_written": "hand-written Dagster job, same shape, in-process",
    "plain_python": "plain Python calls (the floor)",
}


def overhead_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    eph, per = r["instances"]["ephemeral"], r["instances"]["persistent_sqlite"]
    lines = [
        f"A {r['nodes']}-node chain, {r['node_work_ms']:.0f} ms of work (a sleep) per node; "
        f"{r['repeats']} interleaved rounds after a warm-up, whole run (run creation, plan, "
        "events, end). Overhead per node = (median - plain Python median) / nodes. The "
        "persistent instance is Dagster's default SQLite storage under a temporary "
        "DAGSTER_HOME (what `dagster dev` on one machine uses): every event is a write to the "
        "run's SQLite event log.",
        "",
        "| variant | ephemeral: run | per node | persistent SQLite: run | per node |",
        "|---|---|---|---|---|",
    ]
    for key, label in OVERHEAD_LABELS.items():
        lines.append(
            f"| {label} | {span(eph[key])} | {eph[key]['overhead_ms_per_node']} ms | "
            f"{span(per[key])} | {per[key]['overhead_ms_per_node']} ms |"
        )
    lines += [
        "",
        f"Compiled / hand-written (both in-process): **{eph['compiled_over_hand_written']}** "
        f"ephemeral, **{per['compiled_over_hand_written']}** persistent. The persistent "
        f"instance adds **{r['persistent_adds_ms_per_node']} ms per node** (compiled, "
        "threaded) over the ephemeral one: event-log writes. Most of the rest is Dagster's own "
        "step machinery (events, IO manager, input loading), which the hand-written job pays "
        "too.",
    ]
    g = r["goals"]
    persistent = per["compiled_threaded"]["overhead_ms_per_node"]
    goals = [
        (
            "compiled / hand-written job (ephemeral)",
            str(eph["compiled_over_hand_written"]),
            f"≤ {g['compiled_over_hand_written_max']}",
            g["compiled_over_hand_written_met"],
        ),
        (
            "overhead per node, persistent SQLite instance",
            f"{persistent} ms",
            f"≤ {g['persistent_ms_per_node_max']} ms",
            g["persistent_met"],
        ),
    ]
    return lines, goals


PARALLEL_VARIANTS = {
    "threaded": "ours: threaded executor",
    "in_process": "Dagster in-process executor",
    "prefect": "Prefect 3 (thread pool)",
    "thread_pool_floor": "thread-pool floor",
}


def parallel_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    shape, prefect = r["shape"], r["prefect"]
    lines = [
        f"W1: a {shape['chain']}-node chain of {shape['node_s'] * 1000:.0f} ms nodes; W2: 1 → "
        f"{shape['width']} → 1 nodes of {shape['node_s'] * 1000:.0f} ms; W3: {shape['width']} "
        f"branches of {shape['branch_s']} s I/O between a start node and a join. "
        f"maxConcurrentNodes {shape['max_concurrent']}; {shape['repeats']} rounds after a "
        "warm-up, Dagster variants interleaved, each on one ephemeral instance for all its "
        "runs. Prefect 3 runs in its own virtualenv (`bench/.prefect-venv`) on a local "
        "ephemeral API server, flow heartbeats and log shipping off; the floor is a plain "
        "`ThreadPoolExecutor` doing the same sleeps. Wall time of a whole run, median [min, max].",
        "",
        "| workload | " + " | ".join(PARALLEL_VARIANTS.values()) + " | threaded / in-process |",
        "|---|---|---|---|---|---|",
    ]
    for name, variants in r["workloads"].items():
        cells = [
            span(variants[key]) if key in variants else "not measured" for key in PARALLEL_VARIANTS
        ]
        ratio = r["threaded_over_in_process"][name]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    cpu = r.get("threaded_over_in_process_cpu", {})
    if cpu:
        lines += [
            "",
            "CPU time of the run, threaded / in-process: "
            + ", ".join(f"{k} {v}" for k, v in cpu.items())
            + ".",
        ]
    if "error" in prefect:
        lines += ["", f"Prefect: not measured: {prefect['error']}."]
    else:
        database = prefect.get("database", "sqlite (default)")
        lines += ["", f"Prefect {prefect.get('version', '?')}, API database: {database}."]
        if database.startswith("sqlite"):
            lines[-1] += (
                " On SQLite its API server now and then answers 503 (database locked) while "
                "recording task runs and the client retries about 2 s later, which shows in "
                "Prefect's figures; `python -m bench.parallel --prefect-database-url "
                "postgresql+asyncpg://...` runs it on PostgreSQL."
            )
    load = r.get("load_average", {})
    if load:
        lines += [f"Load average before / after: {load['before'][0]:.2f} / {load['after'][0]:.2f}."]
    g = r["goals"]
    goals = [
        (
            "W3 (8 x 0.5 s branches), threaded",
            f"{r['workloads']['W3']['threaded']['median_s']} s",
            f"≤ {g['W3_threaded_max_s']} s",
            g["W3_met"],
        ),
        (
            "W1 chain, threaded / in-process",
            str(r["threaded_over_in_process"]["W1"]),
            f"≤ {g['W1_threaded_over_in_process_max']}",
            g["W1_met"],
        ),
    ]
    return lines, goals


CELERY_STORAGE = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def celery_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    lines = [
        "The parallel workload (W1, W2, W3 above) with every node on Celery workers "
        '(`runOn: "celery"` in the workflow settings), side by side with the same workflows '
        "on the run's own threads (`bench/celery_workers.py`; it never reports a figure it did "
        "not measure). A worker keeps its Dagster instance and its built jobs (by job and "
        "definition hash) across steps; the task carries the step, the instance reference, "
        "the job and its snapshot id (docs/deployment.md).",
        "",
    ]
    if not r.get("measured"):
        return [*lines, f"**Not measured: {r['reason']}.**"], []
    concurrency = r.get("concurrency")
    pool = f" of {concurrency} pool processes each" if concurrency else ""
    lines += [
        f"Executor: `{r.get('executor', '?')}`; {r['workers']} `flowmaestro worker` "
        f"processes{pool}, broker {r['broker']}; launched runs on a real `dagster dev` "
        f"({CELERY_STORAGE.get(r.get('backend', 'sqlite'), '?')}), the two variants alternating, "
        f"{r['repeats']} rounds after a warm-up; a "
        "figure is the run's own duration (Dagster's run start to end), and every Celery run "
        "was checked for the executor's engine event naming the steps it sent to the workers.",
        "",
        "| workload | on the run's threads | on Celery workers | Celery / threads |",
        "|---|---|---|---|",
    ]
    for name, v in r["workloads"].items():
        lines.append(
            f"| {name} | {span(v['threads'])} | {span(v['celery'])} | "
            f"{r['celery_over_threads'][name]} |"
        )
    per_step = r.get("per_step_overhead_ms")
    if per_step:
        lines += [
            "",
            "Per-step overhead (W1 chain: median time from one step's start to the next one's, "
            f"less the node's own 10 ms): {per_step['celery']} ms on Celery workers, "
            f"{per_step['threads']} ms on the run's threads.",
        ]
    jobs = r.get("worker_jobs")
    if jobs:
        lines += [
            f"Steps whose job came from the worker's cache: {jobs.get('cached', 0)}; built: "
            f"{jobs.get('built', 0)} (after the warm-up round)."
        ]
    load = r.get("load_average")
    if load:
        lines += [f"Load average before / after: {load['before'][0]:.2f} / {load['after'][0]:.2f}."]
    g = r.get("goals")
    if not g:
        return lines, []
    goals: list[Goal] = [
        (
            "Celery per-step overhead (W1 chain)",
            f"{per_step['celery'] if per_step else '?'} ms",
            f"≤ {g['per_step_overhead_ms_max']:g} ms",
            g["per_step_met"],
        ),
        (
            f"W3 on {r['workers']} Celery workers / threaded",
            str(r["celery_over_threads"]["W3"]),
            f"≤ {g['W3_celery_over_threads_max']}",
            g["W3_met"],
        ),
    ]
    return lines, goals


def api_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    sq, pg, shape = r["sqlite"], r["postgres"], r["shape"]
    ratio = r.get("postgres_over_sqlite_per_second", {})

    def row(label: str, fn: Callable[[dict[str, Any]], str], ratio_key: str = "") -> str:
        return f"| {label} | {fn(sq)} | {fn(pg)} | {ratio.get(ratio_key, '')} |"

    def latency(phase: str) -> Callable[[dict[str, Any]], str]:
        return lambda b: (
            f"{b[phase]['p50_ms']} ms [{b[phase].get('min_ms', 'n/a')}, {b[phase]['p99_ms']}]"
        )

    lines = [
        f"The API as deployed (`flowmaestro api --workers {shape.get('api_workers', 1)}`, its "
        f"own processes), {shape['clients']} client threads in the benchmark process posting "
        f"executions with fresh Idempotency-Keys for {shape['seconds']} s, on a fresh platform "
        "database per phase. Launch excluded: the API alone (`launch_on_submit` off). Launch "
        "included: each submission also launches a Dagster run through GraphQL (on a real "
        "`dagster dev`), after the response; runs launched are counted until "
        f"{shape.get('launch_grace_s', 0)} s after the window (Dagster launches a few a "
        "second: the rest are dropped). Submit → running: one execution at a time, from "
        f"the POST to the first node's STEP_START ({shape['samples']} samples).",
        "",
        "| measure | SQLite | PostgreSQL | PostgreSQL / SQLite |",
        "|---|---|---|---|",
        row(
            "submissions per second, launch excluded",
            lambda b: str(b["launch_excluded"]["per_second"]),
            "launch_excluded",
        ),
        row("latency p50 [min, p99], launch excluded", latency("launch_excluded")),
        row(
            "submissions per second, launch included",
            lambda b: str(b["launch_included"]["per_second"]),
            "launch_included",
        ),
        row("latency p50 [min, p99], launch included", latency("launch_included")),
        row(
            "runs launched per second",
            lambda b: str(b["launch_included"]["launched_per_second"]),
        ),
        row(
            "submit → first node running, p50 [min, max]",
            lambda b: (
                f"{b['submit_to_node_running']['p50_s']} s "
                f"[{b['submit_to_node_running']['min_s']}, {b['submit_to_node_running']['max_s']}]"
            ),
        ),
    ]
    errors = sum(b[p]["errors"] for b in (sq, pg) for p in ("launch_excluded", "launch_included"))
    if errors:
        lines += ["", f"{errors} submissions were refused (not 201) during the runs."]
    if "open_loop" not in sq or "goals" not in r:
        return lines, []  # results from before the open-loop phase
    open_lines, goals = api_open_loop(sq["open_loop"], pg["open_loop"], shape, r["goals"])
    if "run_throughput" not in sq:
        return [*lines, *open_lines], goals  # results from before the throughput phase
    launch_lines, launch = api_launch(sq, pg, r["goals"])
    return [*lines, *open_lines, *launch_lines], [*goals, *launch]


def api_launch(
    sq: dict[str, Any], pg: dict[str, Any], g: dict[str, Any]
) -> tuple[Lines, list[Goal]]:
    """The api section's run throughput phase (bench/api.py `run_throughput`), goals 4 and 5."""
    t = sq["run_throughput"]

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> str:
        return f"| {label} | {fn(sq['run_throughput'])} | {fn(pg['run_throughput'])} |"

    base = g["baseline_started_per_second"]
    lines = [
        "",
        f"**Runs started per second** (issue 20, goal 5): {t['runs']} executions of the 2-node "
        f"workflow submitted at once through the API by {t['users']} users (default queue "
        "limits: 10 runs in progress, 3 per user), after one warm-up run per user. Started: "
        "the runs' start times, first to last. CPU: user + system seconds of every process "
        "involved (API, webserver, daemon, code servers, run workers through the forkserver, "
        "PostgreSQL's server), exited children included, over the burst, per run; cores / that "
        "cost is the rate the machine could reach.",
        "",
        "| measure | SQLite | PostgreSQL |",
        "|---|---|---|",
        row("runs started per second", lambda b: num(b["started_per_second"])),
        f"| before this work (commit {base.get('commit', '?')}) | {num(base['sqlite'])} | "
        f"{num(base['postgres'])} |",
        row("all finished after", lambda b: f"{num(b['all_finished_s'])} s"),
        row("CPU seconds per run, all processes", lambda b: f"{num(b['cpu_s_per_run'])} s"),
        row(
            "cores / cost → share reached",
            lambda b: f"{num(b['cpu_bound_per_second'])}/s → {num(b['of_cpu_bound'])}",
        ),
        row("succeeded", lambda b: f"{b['succeeded']} of {b['runs']}"),
        row(
            "load average (1 min) before → after",
            lambda b: f"{num(b['load_average_before'])} → {num(b['load_average_after'])}",
        ),
    ]
    p50, rates, ratios = g["first_node_p50_s"], g["started_per_second"], g["over_baseline"]
    goals: list[Goal] = [
        (
            "submit → first node running p50 (worse of SQLite, PostgreSQL)",
            f"{num(max(p50.values()))} s",
            f"≤ {num(g['first_node_p50_s_max'])} s",
            g["first_node_met"],
        ),
        (
            "runs started per second, SQLite / PostgreSQL (x before)",
            f"{num(rates['sqlite'])} / {num(rates['postgres'])} "
            f"({num(ratios['sqlite'])}x / {num(ratios['postgres'])}x)",
            "≥ 2x before on both",
            g["throughput_met"],
        ),
    ]
    return lines, goals


def api_open_loop(
    sq: dict[str, Any], pg: dict[str, Any], shape: dict[str, Any], g: dict[str, Any]
) -> tuple[Lines, list[Goal]]:
    """The api section's open-loop phase (bench/api.py `open_loop`) and its goals."""
    loop = shape.get("open_loop", {})
    post_rate, get_rate = sq["post"]["offered_per_second"], sq["get"]["offered_per_second"]

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> str:
        return f"| {label} | {fn(sq)} | {fn(pg)} |"

    def latency(kind: str) -> Callable[[dict[str, Any]], str]:
        def text(b: dict[str, Any]) -> str:
            d = b[kind]
            figures = (d["p50_ms"], d["p99_ms"], d["max_ms"])
            return "none answered" if None in figures else millis(*figures)

        return text

    def refused(b: dict[str, Any]) -> str:
        found = {**b["post"]["errors"], **{f"GET {k}": v for k, v in b["get"]["errors"].items()}}
        return ", ".join(f"{v} x {k}" for k, v in found.items()) or "none"

    def trips(b: dict[str, Any]) -> str:
        t = b["round_trips"]
        return " / ".join(
            f"{num(t[k]['round_trips'])} ({num(t[k]['statements'])} statements)"
            for k in ("post", "replay", "get")
        )

    def database(b: dict[str, Any]) -> str:
        found = b.get("database")
        if not found:
            return "in the API process"
        return (
            f"{num(found['cpu_ms_per_request'])} ms; {num(found['commits_per_request'])} commits "
            f"a request; {found['sessions_opened']} connections opened"
        )

    lines = [
        "",
        f"**Open loop** (issue 20, goal 2): POSTs at a fixed {num(post_rate)}/s (fresh "
        f"Idempotency-Keys) and GETs of {loop.get('reads', 20)} executions made before at "
        f"{num(get_rate)}/s, interleaved, for {num(loop.get('seconds', sq['seconds']))} s, to "
        f"the API as deployed ({shape.get('api_workers', 2)} workers, launch excluded, no "
        "Dagster stack: a read's runs come from an idle Dagster home's storage), each phase on "
        "a fresh database. The load generator is a process of its own (keep-alive HTTP/1.1 on "
        f"up to {loop.get('connections', 256)} connections, uvloop); every request is due at a "
        "time fixed in advance and its latency runs from then, so a server that falls behind "
        "shows in the figures instead of slowing the load down (no coordinated omission). CPU: "
        "the API processes' user + system time over the window, per request (POSTs and GETs); "
        "PostgreSQL's backends of the database apart. Round trips: what one request sends to "
        "the platform database (statements, plus BEGIN and COMMIT per transaction, plus pool "
        "pings), counted in process.",
        "",
        "| measure | SQLite | PostgreSQL |",
        "|---|---|---|",
        row("POST → 201, p50 / p99 / max", latency("post")),
        row("GET /executions/{id} → 200, p50 / p99 / max", latency("get")),
        row(
            "achieved: POSTs / GETs a second",
            lambda b: (
                f"{num(b['post']['achieved_per_second'])} / {num(b['get']['achieved_per_second'])}"
            ),
        ),
        row("refused or failed", refused),
        row("API CPU per request", lambda b: f"{num(b['api_cpu_ms_per_request'])} ms"),
        row("PostgreSQL CPU per request", database),
        row(
            "round trips: submission / replay / read",
            trips,
        ),
        row(
            "load generator: CPU per request, lag p99",
            lambda b: (
                f"{num(b['client_cpu_ms_per_request'])} ms, "
                f"{num(b['post'].get('client_lag_p99_ms') or 0)} ms"
            ),
        ),
        row(
            "load average (1 min) before → after",
            lambda b: f"{num(b['load_average_before'])} → {num(b['load_average_after'])}",
        ),
    ]

    def worse(key: str) -> str:
        values = [b[key] for b in (sq, pg)]
        return "none answered" if None in values else f"{num(max(values))} ms"

    ratio = g.get("postgres_over_sqlite_post_p99")
    goals: list[Goal] = [
        (
            f"API submission p99 at {num(post_rate)}/s, {shape.get('api_workers', 2)} workers, "
            "launch excluded (worse of SQLite, PostgreSQL)",
            worse("post_p99_ms"),
            f"≤ {num(g['post_p99_ms_max'])} ms",
            g["post_met"],
        ),
        (
            f"GET of an execution p99 at the same load ({num(get_rate)}/s of GETs; worse of "
            "SQLite, PostgreSQL)",
            worse("get_p99_ms"),
            f"≤ {num(g['get_p99_ms_max'])} ms",
            g["get_met"],
        ),
        (
            f"PostgreSQL / SQLite, submission p99 at {num(post_rate)}/s",
            "n/a" if ratio is None else num(ratio),
            "≤ 1 (at least as fast)",
            g["postgres_met"],
        ),
    ]
    return lines, goals


def waitpoints_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    resume = r["resume"]

    def timing(label: str, d: dict[str, Any], goal: str) -> str:
        return (
            f"| {label} | {num(d['p50_s'])} s | {num(d['min_s'])} / {num(d['max_s'])} s | "
            f"{num(d['p95_s'])} s | "
            f"{d['samples']} | {goal} |"
        )

    def tick(label: str, d: dict[str, Any]) -> str:
        return (
            f"| {label} ({d['parked']:,} parked, none due) | {d['tick_median_s']} s | "
            f"{d.get('tick_min_s', 'n/a')} / {d['tick_max_s']} s | | {d.get('ticks', 5)} | "
            f"≤ {r['goals']['tick_s_max']} s |"
        )

    g = r["goals"]
    lines = [
        "On a real `dagster dev` whose waitpoint sensor ticks every second: an approval decided "
        "through the API → the resumed run's first node starts; a 3 s wait node's due time → "
        "the resumed run's first node starts. The tick: one evaluation of the waitpoint sensor "
        "with 10,000 parked executions (half approvals, half timers a day away).",
        "",
        "| measure | median | min / max | p95 | samples | goal |",
        "|---|---|---|---|---|---|",
        timing(
            "approval → resumed",
            resume["approval_to_resumed_step"],
            f"p50 ≤ {g['approval_p50_s_max']} s",
        ),
        timing("due time → resumed", resume["due_to_resumed_step"], ""),
        tick("sensor tick, SQLite", r["sqlite_tick"]),
        tick("sensor tick, PostgreSQL", r["postgres_tick"]),
    ]
    worst = max(r["sqlite_tick"]["tick_median_s"], r["postgres_tick"]["tick_median_s"])
    goals = [
        (
            "approval → resumed, p50",
            f"{resume['approval_to_resumed_step']['p50_s']} s",
            f"≤ {g['approval_p50_s_max']} s",
            g["approval_met"],
        ),
        (
            "waitpoint sensor tick, 10,000 parked (worse of SQLite, PostgreSQL)",
            f"{worst} s",
            f"≤ {g['tick_s_max']} s",
            g["tick_met"],
        ),
    ]
    return lines, goals


def refused(d: dict[str, Any]) -> str:
    """`none failed`, or what failed: statuses other than 2xx and client errors (`12 x 500,
    3 x ReadError`)."""
    items = d.get("refused") or {}
    return ", ".join(f"{n} x {k}" for k, n in items.items()) or "none failed"


def millis(*values: float) -> str:
    """`12 / 40 / 45 ms`, or in seconds once any reaches one: `1.89 / 7.56 / 8.26 s`."""
    if max(values) >= 1000:
        return " / ".join(f"{v / 1000:.2f}" for v in values) + " s"
    return " / ".join(num(v) for v in values) + " ms"


def webhooks_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    sq, pg, shape, g = r["sqlite"], r["postgres"], r["shape"], r["goals"]
    workers = shape["api_workers"]
    rate = f"{num(shape['rate'])}/s"
    excluded = f"workers_{workers}"

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> str:
        return f"| {label} | {fn(sq)} | {fn(pg)} |"

    def alone(b: dict[str, Any]) -> dict[str, Any]:
        """The API alone with `workers` workers: ramp, load, one at a time."""
        found: dict[str, Any] = b["launch_excluded"][excluded]
        return found

    def first(b: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = b["launch_included"]["delivery_to_first_node"]
        return found

    def loaded(get: Callable[[dict[str, Any]], dict[str, Any]], label: str) -> Lines:
        def achieved(b: dict[str, Any]) -> str:
            d = get(b)
            launched = f"; {d['launched']} launched" if "launched" in d else ""
            machine = f"{num(d['load_average_before'])} → " if "load_average_before" in d else ""
            return (
                f"sent {num(d['sent_per_second'])}/s, answered {num(d['answered_per_second'])}/s;"
                f" {refused(d)}{launched}; {machine}{num(d['load_average_after'])}"
            )

        return [
            row(
                f"{rate}, {label}: 202 p50 / p95 / p99",
                lambda b: millis(get(b)["p50_ms"], get(b)["p95_ms"], get(b)["p99_ms"]),
            ),
            row("… achieved rates; failed; load average (1 min) before → after", achieved),
        ]

    def kept_up(b: dict[str, Any]) -> str:
        found = alone(b)["ramp"]["kept_up_per_second"]
        return f"{num(found)}/s" if found else "none"

    lines = [
        "Signed deliveries (`X-FlowMaestro-Signature`, each with its own Idempotency-Key) to "
        "`POST /hooks/{workflow}/{trigger}` of a deployed trigger → output workflow, the API as "
        "deployed in its own processes (`flowmaestro api --workers N`; the CLI's default is "
        f"1 worker, the other rows {workers}, one per core), its per-hook rate limit raised "
        f"above the load (`{shape.get('hook_rate_limit', '?')}`), a fresh platform database "
        "per phase. Load: an open-loop async httpx client in the benchmark process, on the same "
        f"cores, makes {num(shape['rate'])} deliveries a second due for "
        f"{num(shape['seconds'])} s on a fixed schedule, each sent once one of "
        f"{shape['connections']} connections is free and signed as it goes; a latency runs "
        "from the delivery's due time to its answer, so a server that falls behind shows as "
        "latency, not as a lower offered rate. Failed: answers other than 2xx, and client "
        "errors (ReadError: the connection dropped; a timeout: nothing within 60 s). Launch "
        "excluded: no Dagster, `launch_on_submit` off (the "
        "request path alone). Launch included: a real `dagster dev`; each accepted delivery is "
        "launched after its answer (runs launched counted until "
        f"{num(shape['launch_grace_s'])} s after the window). CPU per delivery: the API's "
        "processes (from /proc) and the load client's, over the load. Ramp: "
        f"{workers} workers, launch excluded, {num(shape.get('ramp_seconds', 3))} s steps at "
        f"{', '.join(num(x) for x in shape['ramp_rates'])}/s until one misses p99 ≤ "
        f"{num(g['p99_ms_max'])} ms, fails a delivery or answers under 95% of its rate. One at a "
        "time: a new delivery, then a redelivery of a key accepted under load, "
        f"{shape['duplicates']} pairs. Delivery → first node running: {shape['samples']} "
        "deliveries one at a time, each once the last run ended, from the POST to the first "
        "node's STEP_START in the run's Dagster event log (the event GET "
        "/executions/{id}/timeline reports, to the millisecond), with the answer, the run's "
        "creation (the launch) and its start (dequeued, its process up) on the way.",
        "",
        "| measure | SQLite | PostgreSQL |",
        "|---|---|---|",
        *loaded(lambda b: b["launch_excluded"]["workers_1"]["load"], "1 worker, launch excluded"),
        *loaded(lambda b: alone(b)["load"], f"{workers} workers, launch excluded"),
        *loaded(lambda b: b["launch_included"]["load"], f"{workers} workers, launch included"),
        row(
            f"CPU per delivery, {workers} workers, launch excluded: API / load client",
            lambda b: (
                f"{num(alone(b)['load']['api_cpu_ms_per_delivery'])} / "
                f"{num(alone(b)['load']['client_cpu_ms_per_delivery'])} ms"
            ),
        ),
        row(f"ramp: highest rate kept up (p99 ≤ {num(g['p99_ms_max'])} ms)", kept_up),
        row(
            "ramp steps: rate → answered, p99",
            lambda b: "; ".join(
                f"{num(s['offered_per_second'])} → {num(s['answered_per_second'])}/s, "
                f"{millis(s['p99_ms'])}"
                for s in alone(b)["ramp"]["steps"]
            ),
        ),
        row(
            "one at a time: new delivery → 202, p50 / p95",
            lambda b: millis(
                alone(b)["one_at_a_time"]["new_p50_ms"], alone(b)["one_at_a_time"]["new_p95_ms"]
            ),
        ),
        row(
            "one at a time: duplicate → 200, p50 / p95",
            lambda b: millis(
                alone(b)["one_at_a_time"]["duplicate_p50_ms"],
                alone(b)["one_at_a_time"]["duplicate_p95_ms"],
            ),
        ),
        row(
            "delivery → first node running, p50 / p90 [min, max]",
            lambda b: (
                f"{num(first(b)['p50_s'])} / {num(first(b)['p90_s'])} s "
                f"[{num(first(b)['min_s'])}, {num(first(b)['max_s'])}]"
            ),
        ),
        row(
            "… on the way, p50: answered / run created / run started",
            lambda b: (
                " / ".join(
                    num(first(b)[f"{mark}_p50_s"])
                    for mark in ("answered", "run_created", "run_started")
                )
                + " s"
            ),
        ),
    ]
    cores = shape.get("cores", 2)
    cpu = max(alone(b)["load"]["api_cpu_ms_per_delivery"] for b in (sq, pg))
    best = max(
        d["answered_per_second"]
        for b in (sq, pg)
        for d in (alone(b)["load"], b["launch_included"]["load"])
    )
    lines += [
        "",
        f"At {rate} offered the API answered at most {num(best)}/s. A delivery costs its "
        f"processes up to {num(cpu)} ms of CPU, so {cores} cores take at most about "
        f"{cores * 1000 / cpu:.0f} a second with nothing else running; here the load "
        "client, PostgreSQL (its column) and Dagster (launch included) share them: past the "
        "ramp's rate the backlog grows for the whole window and a 202's latency is mostly its "
        "wait in it.",
    ]
    wrong = sum(alone(b)["one_at_a_time"]["duplicate_wrong"] for b in (sq, pg))
    if wrong:
        lines += ["", f"{wrong} redeliveries were not answered as duplicates of their first."]
    worst_p99 = max(b["launch_included"]["load"]["p99_ms"] for b in (sq, pg))
    worst_first = max(first(b)["p50_s"] for b in (sq, pg))
    goals: list[Goal] = [
        (
            f"webhook delivery → 202 p99 at {rate}, {workers} workers, launch included (worse of "
            "SQLite, PostgreSQL)",
            millis(worst_p99),
            f"≤ {num(g['p99_ms_max'])} ms",
            g["p99_met"],
        ),
    ]
    if "kept_up_met" in g:
        slowest = min(alone(b)["ramp"]["kept_up_per_second"] or 0 for b in (sq, pg))
        goals.append(
            (
                f"webhook deliveries a second with 202 p99 ≤ {num(g['p99_ms_max'])} ms, "
                f"{workers} workers, launch excluded (worse of SQLite, PostgreSQL)",
                f"{num(slowest)}/s" if slowest else "none",
                f"≥ {num(g['kept_up_per_second_min'])}/s",
                g["kept_up_met"],
            )
        )
    goals.append(
        (
            "webhook delivery → first node running, p50 (worse of SQLite, PostgreSQL)",
            f"{num(worst_first)} s",
            f"≤ {num(g['first_node_p50_s_max'])} s",
            g["first_node_met"],
        )
    )
    return lines, goals


def queues_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    empty, backlog = r["empty_queue"], r["queue_backlog"]
    n = r["shape"]["backlog"]

    def q(d: dict[str, Any], unit: str = "s") -> str:
        return f"{num(d['p50'])} {unit} [{num(d.get('min', 'n/a'))}, {num(d['max'])}]"

    lines = [
        "A real `dagster dev` with the rendered queue settings ("
        + ", ".join(f"{k} {v}" for k, v in r["settings"].items())
        + f"). Probe runs "
        f"of a 2-node workflow, one at a time ({r['shape']['probes']} each), with the queue "
        f"empty and with {n} runs held queued in a paused queue (every dequeue pass scans "
        "them). Dequeue decision: Dagster's own `_get_runs_to_dequeue` and our replay of it "
        '("why queued"), in process on the same storage. Median [min, max].',
        "",
        f"| measure | empty queue | {n} queued |",
        "|---|---|---|",
        f"| enqueued → dequeued | {q(empty['enqueued_to_dequeued_s'])} | "
        f"{q(backlog['enqueued_to_dequeued_s'])} |",
        f"| enqueued → started (queue wait) | {q(empty['enqueued_to_started_s'])} | "
        f"{q(backlog['enqueued_to_started_s'])} |",
        f"| dequeued → started (launch) | {q(empty['dequeued_to_started_s'])} | "
        f"{q(backlog['dequeued_to_started_s'])} |",
        f"| Dagster's dequeue decision | {q(r['decision_empty']['dagster_dequeue_decision_ms'], 'ms')}"
        f" | {q(r['decision_backlog']['dagster_dequeue_decision_ms'], 'ms')} |",
        f"| our why-queued replay | {q(r['decision_empty']['why_queued_replay_ms'], 'ms')} | "
        f"{q(r['decision_backlog']['why_queued_replay_ms'], 'ms')} |",
        "",
        f"Queue wait with {n} queued / empty (p50): **{r['backlog_over_empty_start_p50']}**. "
        f"GET /executions/{{id}} of a queued execution (with its why-queued): "
        f"{q(r['get_queued_execution_ms'], 'ms')}. Submitting the {n} held runs took "
        f"{r['backlog_submit_s']} s.",
        "",
        "Pool granularity, a limit-1 workflow whose node waits 4 s to retry: second run "
        "dequeued minus first run ended (negative: both in progress at once): run granularity "
        f"{r['granularity_run_gap_s']} s, op granularity {r['granularity_op_gap_s']} s.",
    ]
    return lines, []


FAIRNESS_GOAL = 3.0  # the light user's wait with a flood queued, at most this times idle


def fairness_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    idle, flooded = r["idle"], r["flooded"]
    flood, light = r["shape"]["flood"], r["shape"]["light"]

    def q(d: dict[str, Any]) -> str:
        return f"{num(d['p50'])} s / {num(d['mean'])} s [{num(d['min'])}, {num(d['max'])}]"

    lines = [
        "A real `dagster dev` with the default queue settings ("
        + ", ".join(f"{k} {v}" for k, v in r["settings"].items())
        + f"), all runs at the same priority. A light user submits {light} runs at once, on an "
        f"idle instance, then while a flooder has {flood} submitted "
        f"({r['flood_queued_at_burst']} still queued when the burst starts; submitting them "
        f"took {r['flood_submit_s']} s). Per run of the burst, p50 / mean [min, max].",
        "",
        "| light user's runs | idle instance | flood queued | ratio (p50 / mean) |",
        "|---|---|---|---|",
        f"| enqueued → dequeued | {q(idle['enqueued_to_dequeued_s'])} | "
        f"{q(flooded['enqueued_to_dequeued_s'])} | "
        f"{num(r['enqueued_to_dequeued_s_p50_ratio'])} / "
        f"{num(r['enqueued_to_dequeued_s_mean_ratio'])} |",
        f"| enqueued → started | {q(idle['enqueued_to_started_s'])} | "
        f"{q(flooded['enqueued_to_started_s'])} | {num(r['enqueued_to_started_s_p50_ratio'])} / "
        f"{num(r['enqueued_to_started_s_mean_ratio'])} |",
        f"| burst makespan | {num(idle['makespan_s'])} s | {num(flooded['makespan_s'])} s | "
        f"{num(r['makespan_ratio'])} |",
        "",
        "Without the per-user limit (priority, then FIFO) the light user's first run would wait "
        f"behind the {r['flood_queued_at_burst']} queued flood runs: at the "
        f"{num(r['throughput_runs_per_s'])} runs/s measured meanwhile, about "
        f"{num(r['fifo_estimate_first_wait_s'])} s (an estimate, not a run).",
    ]
    worst = max(r["enqueued_to_started_s_p50_ratio"], r["enqueued_to_started_s_mean_ratio"])
    goals: list[Goal] = [
        (
            "a light user's queue wait with a flood queued / idle (worst of p50, mean)",
            num(worst),
            f"≤ {num(FAIRNESS_GOAL)}",
            worst <= FAIRNESS_GOAL,
        )
    ]
    return lines, goals


def deploy_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    """One table per configuration: the default (one shared code server, many locations) and
    the previous one (a code server per location, restarted on each reload), for comparison."""
    variants = r.get("variants", [r])
    lines: Lines = [
        "A real `dagster dev` and the API in process on SQLite; workflows deployed straight into "
        "the database (the corpus definitions in turn), every location then reloaded once, "
        "untimed (the steady state: each earlier workflow was loaded by its own deploy), then "
        "one more deployed through the API per sample. Deploy → runnable: the deploy call, "
        "which reloads the workflow's location and answers once the job is visible in GraphQL. "
        "Deploy → launched: until a run of an execution submitted right after exists in "
        "Dagster. Memory: resident set after the samples. Load: the machine's 1-minute load "
        "average before and after the size (2 cores, shared).",
        "",
    ]
    goals: list[Goal] = []
    for variant in variants:
        more, goal = deploy_variant(variant)
        lines += more
        goals += goal
    default = next((v for v in variants if _deploy_is_default(v)), None)
    previous = next((v for v in variants if not _deploy_is_default(v)), None)
    if default and previous:
        common = [size for size in previous["sizes"] if size in default["sizes"]]
        if common:
            size = common[-1]
            new = default["sizes"][size]["deploy_to_runnable"]["median_s"]
            old = previous["sizes"][size]["deploy_to_runnable"]["median_s"]
            lines += [
                "",
                f"At {size} workflows, deploy → runnable: **{num(new)} s** with the default "
                f"configuration, {num(old)} s with {_deploy_label(previous)}"
                + (f" ({num(round(old / new, 1))} times as long)." if new else "."),
            ]
    return lines, goals


def _deploy_is_default(r: dict[str, Any]) -> bool:
    return bool(
        r.get("code_server", "per_location") == r.get("code_server_default", "per_location")
        and r["shards"] == r["shards_default"]
    )


def _deploy_label(r: dict[str, Any]) -> str:
    where = (
        "one shared code server"
        if r.get("code_server") == "shared"
        else "a code server per location, restarted on each reload"
    )
    return f"{r['shards']} location(s), {where}"


def deploy_variant(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    default = _deploy_is_default(r)
    lines = [
        f"### {_deploy_label(r)}" + (" (the default)" if default else ""),
        "",
        f"`FLOWMAESTRO_CODE_SERVER={r.get('code_server', 'per_location')}`, "
        f"`FLOWMAESTRO_CODE_LOCATION_SHARDS={r['shards']}`; {r['corpus_definitions']} corpus "
        "definitions"
        + ("" if r.get("schedules", True) else " (none with a schedule trigger)")
        + f", {r['samples']} sample(s) per size.",
        "",
        "| workflows deployed | jobs per location | deploy → runnable | of which reload + "
        "visible | deploy → launched | memory: code server(s) / webserver / daemon | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, d in r["sizes"].items():
        memory = d.get("memory_mb")
        load = d.get("load")
        lines.append(
            f"| {size} | {d.get('jobs_per_location', 'n/a')} | {span(d['deploy_to_runnable'])} | "
            f"{span(d['reload_and_visible'])} | {span(d['deploy_to_launched'])} | "
            + (
                f"{memory['code_server']} / {memory['webserver']} / {memory['daemon']} MiB"
                if memory
                else "n/a"
            )
            + " | "
            + (f"{load['before'][0]} → {load['after'][0]}" if load else "n/a")
            + " |"
        )
    sizes = list(r["sizes"])
    last = r["sizes"][sizes[-1]]
    lines += [
        "",
        f"Deploy → runnable at {sizes[-1]} / at {sizes[0]} workflows: "
        f"**{r['largest_over_smallest']}**. Shard snapshot (building shard 0 from the database "
        f"and snapshotting its jobs, cold, in the benchmark process) at {sizes[-1]}: "
        f"{num(last.get('shard_snapshot_s'))} s: what a per-location code server redoes on "
        "every reload, and the shared one only for versions it has not built yet.",
        "",
    ]
    g = r["goals"]
    goals: list[Goal] = []
    for size, limit in g.get("runnable_s_max", {}).items():
        if size not in r["sizes"]:
            continue
        median = r["sizes"][size]["deploy_to_runnable"]["median_s"]
        goals.append(
            (
                f"deploy → runnable at {size} workflows, {_deploy_label(r)}",
                f"{num(median)} s",
                f"≤ {num(limit)} s at {size}" if default else "(for comparison)",
                g.get("met_at", {}).get(size) if default else None,
            )
        )
    memory = last.get("memory_mb")
    if default and memory:
        goals.append(
            (
                f"code-server memory at {sizes[-1]} workflows (all locations, one process)",
                f"{memory['code_server']} MiB",
                "stated, no per-workflow process",
                None,
            )
        )
    return lines, goals


EVENTS_VARIANTS = {
    "one_parked": "all on one execution parked at an approval",
    "many_queued": "one each on {n:,} queued executions",
}


def events_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    shape, g = r["shape"], r["goals"]
    n = shape["idle_subscribers"]

    def latency(d: dict[str, Any]) -> str:
        return f"{num(d['p50_s'])} / {num(d['p99_s'])} s [{num(d['min_s'])}, {num(d['max_s'])}]"

    def requests(d: dict[str, Any], label: str) -> str:
        found = next(v for k, v in d.items() if k != "failed" and label in k)
        return millis(found["p50_ms"], found["p99_ms"])

    lines = [
        "`GET /executions/{id}/events` (server-sent events) on a real `dagster dev` on "
        "PostgreSQL, the API in its own process (`flowmaestro api`, one worker: one event "
        "feed), the SSE clients async httpx streams in the benchmark process. Event latency: "
        "a node's STEP_SUCCESS record in Dagster's event log (its timestamp, the event's "
        "`timestamp`) → its `node.succeeded` event read by a client subscribed right after the "
        f"submission, over {shape['executions']} executions of a {shape['nodes']}-node chain "
        f"(input, transforms, output) run one at a time. Idle subscribers: {n:,} more streams "
        "held open, in two ways, each on a fresh API process with its own baseline. Other "
        f"requests: {shape['requests']} GET /health and GET /executions/{{id}} each, one at a "
        "time. RSS: the API process's resident memory before and after opening the idle "
        f"subscribers; CPU: the API process's CPU time over {num(shape.get('quiet_s', 15))} s "
        "with no request made (cores busy), before and after. Figures in wall time move with "
        "the machine's load; the CPU column does not.",
        "",
        f"| idle subscribers | event latency p50 / p99 [min, max], alone | with {n:,} idle | "
        f"GET /health p50 / p99, none → {n:,} | GET /executions/{{id}} p50 / p99, none → {n:,} "
        "| RSS before → after (per subscriber) | CPU at rest, none → "
        f"{n:,} | opening them |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in EVENTS_VARIANTS.items():
        v = r["variants"][key]
        without, loaded = v["without"], v["with_idle"]
        lines.append(
            f"| {label.format(n=n)} | {latency(without['latency'])} | "
            f"{latency(loaded['latency'])} | {requests(without['requests'], 'health')} → "
            f"{requests(loaded['requests'], 'health')} | "
            f"{requests(without['requests'], 'executions')} → "
            f"{requests(loaded['requests'], 'executions')} | "
            f"{without['rss_kib'] / 1024:.0f} → {loaded['rss_kib'] / 1024:.0f} MiB "
            f"({num(v['rss_per_subscriber_kib'])} KiB) | {num(without.get('cpu_share', 'n/a'))}"
            f" → {num(loaded.get('cpu_share', 'n/a'))} | {num(v['idle']['open_s'])} s |"
        )
    worst_latency = max(v["with_idle"]["latency"]["p99_s"] for v in r["variants"].values())
    worst_ratio = max(x for v in r["variants"].values() for x in v["requests_p99_ratio"].values())
    goals: list[Goal] = [
        (
            f"live event latency p99 with {n:,} subscribers (worse of the two ways)",
            f"{num(worst_latency)} s",
            f"≤ {num(g['latency_p99_s_max'])} s",
            g["latency_met"],
        ),
        (
            f"other requests' p99 with {n:,} idle subscribers / without (worst)",
            num(worst_ratio),
            f"≤ {num(g['requests_p99_ratio_max'])}",
            g["requests_met"],
        ),
    ]
    return lines, goals


def metrics_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    backends = r["backends"]
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    first = next(iter(backends.values()))
    cols = [b for b in ("sqlite", "postgres") if b in backends]

    def row(label: str, value: Callable[[dict[str, Any]], Any]) -> str:
        return f"| {label} | " + " | ".join(str(value(backends[b])) for b in cols) + " |"

    lines = [
        f"`GET /metrics` (flowmaestro_api/services/metrics.py) with {first['executions']:,} "
        f"executions of {r['shape']['workflows']} workflows seeded directly in the platform "
        "database (70 % succeeded, 10 % failed, 5 % each cancelled, queued, running, waiting; "
        "5 node attempts each; waitpoints and decided approvals) and one Dagster run per "
        "launched execution in Dagster's storage beside it. The API in process (`create_app`, "
        "FastAPI's test client), one scrape at a time. Cold: the first scrapes of a new API "
        "process, while the node duration histogram reads the finished runs it has not seen "
        "(2,000 a scrape). Warm: what every later scrape costs.",
        "",
        "| measure | " + " | ".join(names[b] for b in cols) + " |",
        "|---|" + "---|" * len(cols),
        row(
            "executions / node attempts / Dagster runs",
            lambda d: f"{d['executions']:,} / {d['node_attempts']:,} / {d['dagster_runs']:,}",
        ),
        row(
            "warm scrape p50 / p99 / max",
            lambda d: millis(d["p50_ms"], d["p99_ms"], d["max_ms"]),
        ),
        row("warm samples", lambda d: d["samples"]),
        row(
            "cold: scrapes, first, total",
            lambda d: (
                f"{d['cold_scrapes']}, {num(d['cold_first_ms'])} ms, {num(d['cold_total_s'])} s"
                if d.get("histogram_reads_runs", True)
                else "not measured (see below)"
            ),
        ),
        row("response size", lambda d: f"{d['response_bytes']:,} bytes"),
        "",
        "On SQLite the seeded runs carry no workflow-name tag, so the histogram skips them: "
        "Dagster's SQLite storage keeps each run's event log in a file of its own, created "
        "when first read, and creating 10,000 of them (~0.25 s each here) measures the seeding, "
        "not the scrape. Warm scrapes run the same queries either way.",
    ]
    return lines, []


def media_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    lines: Lines = [
        "Each node type on a typical input, called in its own spawned process after one warm-up "
        "call (libraries loaded); the AI nodes against a local fake OpenAI-compatible server, so "
        "their figure is the platform's own overhead (upload streaming, storing the answer).",
        "",
        "| node | input | per call (median) | first call | Python peak | process peak RSS |",
        "|---|---|---|---|---|---|",
    ]

    def figure(row: dict[str, Any], key: str, unit: str) -> str:
        """A row's figure (bench/media_common.py's keys), `—` where a results file lacks it."""
        return "—" if row.get(key) is None else f"{num(row[key])} {unit}"

    for row in r["rows"]:
        lines.append(
            f"| {row['node']} | {row.get('input', '')} | {num(row['median_ms'])} ms | "
            f"{figure(row, 'first_call_ms', 'ms')} | {figure(row, 'python_peak_mb', 'MB')} | "
            f"{figure(row, 'max_rss_mb', 'MB')} |"
        )
    for family, error in r.get("errors", {}).items():
        lines.append(f"\n**{family} failed:** {error}")
    kb = r["knowledge"]
    goals = kb["goals"]
    chunks = kb.get("indexed", {}).get("chunks", "?")
    lines += [
        "",
        f"Knowledge base query, {num(chunks)} chunks, full text on SQLite: p50 "
        f"{num(kb['query_ms']['p50'])} ms, p95 {num(kb['query_ms']['p95'])} ms; peak Python "
        f"memory while querying {num(kb['memory_mb']['query_peak_python'])} MB.",
    ]
    return lines, [
        (
            "knowledge base query p95",
            f"{num(kb['query_ms']['p95'])} ms",
            f"≤ {num(goals['query_p95_ms_max'])} ms",
            goals["query_met"],
        ),
        (
            "knowledge base query, peak Python memory",
            f"{num(kb['memory_mb']['query_peak_python'])} MB",
            f"≤ {num(goals['query_peak_mb_max'])} MB",
            goals["memory_met"],
        ),
    ]


def analytics_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    backends, shape, goals = r["backends"], r["shape"], r["goals"]
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    cols = [b for b in ("sqlite", "postgres") if b in backends]
    first = backends[cols[0]]
    lines = [
        f"`GET /workflows/{{id}}/analytics` (flowmaestro_api/services/analytics.py) over "
        f"{first['executions']:,} executions generated into the platform database "
        f"(bench/analytics.py: {shape['workflows']} workflows with Zipf-skewed shares, "
        f"{shape['history_days']} days of history, facts recorded as executions settle; the "
        "last 10 minutes' executions still under way, counted from their node attempts). "
        "The API in process, Dagster unreachable (analytics do not read it); "
        f"{shape['queries']} requests per row after one warm-up, one at a time. SQLite runs "
        "in the API's process, so its CPU time per request is what a request costs whatever "
        "else the machine does.",
        "",
        "| workflow, range | executions in range (workflow's total) | "
        + " | ".join(f"{names[b]} p50 / p99 / max" for b in cols)
        + " | SQLite CPU per request, p50 | every execution counted |",
        "|---|---|" + "---|" * len(cols) + "---|---|",
    ]
    for key, case in first["cases"].items():
        cells = [
            millis(*(backends[b]["cases"][key][k] for k in ("p50_ms", "p99_ms", "max_ms")))
            for b in cols
        ]
        cpu = backends.get("sqlite", {}).get("cases", {}).get(key, {}).get("cpu_p50_ms")
        cells.append("—" if cpu is None else f"{num(cpu)} ms")
        counted = all(backends[b]["cases"][key]["all_counted"] for b in cols)
        lines.append(
            f"| {case['workflow']}, {case['range_days']} day(s) | {case['range_executions']:,} "
            f"({case['workflow_executions']:,}) | " + " | ".join(cells) + f" | {met(counted)} |"
        )
    load = r.get("load", {})
    lines += [
        "",
        "Seeding: "
        + ", ".join(f"{names[b]} {num(backends[b]['seed_s'])} s" for b in cols)
        + (
            f". Load average (1 min) before → after: {num(round(load['before'][0], 1))} → "
            f"{num(round(load['after'][0], 1))}."
            if load
            else "."
        ),
    ]
    goal = (
        f"analytics p99 at {first['executions']:,} executions (worst workflow and range, "
        "worse of SQLite, PostgreSQL), every execution counted",
        f"{num(goals['worst_p99_ms'])} ms",
        f"≤ {num(goals['p99_ms_max'])} ms",
        goals["met"],
    )
    return lines, [goal]


def scale_runs_section(r: dict[str, Any]) -> tuple[Lines, list[Goal]]:
    """bench/scale_runs.py: 10,000 parked and levels of concurrent runs on PostgreSQL."""
    shape, g = r["shape"], r["goals"]
    levels = r["levels"]

    def figure(d: dict[str, Any], key: str, unit: str) -> str:
        if "error" in d:
            return f"failed: `{d['error'][:120]}`"
        value = d.get(key)
        return "n/a" if value is None else f"{num(value)} {unit}"

    def dequeue(d: dict[str, Any]) -> str:
        if "error" in d:
            return f"failed: `{d['error'][:120]}`"
        q = d.get("enqueued_to_dequeued_s")
        return f"{num(q['p50'])} / {num(q['p95'])} s" if q else "n/a"

    def connections(d: Any) -> str:
        if not isinstance(d, dict):
            return f"failed: `{str(d)[:120]}`"
        return f"{d['database']} of {d['max_connections']}"

    def api(d: dict[str, Any], kind: str) -> str:
        if "error" in d:
            return f"failed: `{d['error'][:120]}`"
        errors = sum(d[kind]["errors"].values())
        text = "n/a" if d[kind]["p99_ms"] is None else f"{num(d[kind]['p99_ms'])} ms"
        return text + (f" ({errors} errors)" if errors else "")

    lines = [
        f"A real `dagster dev` on one fresh PostgreSQL database (platform tables and Dagster's "
        f"instance storage), {shape['parked']:,} parked executions seeded in it (half approvals, "
        "half timers a day away, none due), then levels of concurrent runs: runs of `input → "
        f"wait {shape['hold_s']} s → output` launched by the queue daemon through the "
        "forkserver run launcher, each sleeping in its wait node (in progress, no CPU). At each "
        "level, with all its runs in progress: the waitpoint sensor's tick in process (median of "
        "5, as the Waitpoints section times it) and the daemon's own ticks; enqueued → dequeued "
        f"of {shape['probes']} probe runs submitted one at a time (p50 / p95; Dagster writes "
        "RUN_STARTING when it dequeues); the API (2 workers, launch excluded) under an open "
        f"loop of {num(shape['api_post_per_second'])} POST/s and "
        f"{num(shape['api_get_per_second'])} GET/s of running executions for "
        f"{num(shape['api_seconds'])} s (lower than the API section's 200/s: the 2 cores are "
        "shared with the stack); memory from /proc/<pid>/smaps_rollup of each run worker with "
        "its child processes (USS = private pages, PSS = private + its share of shared pages).",
        "",
        "| runs in progress | ramp | tick (in process) | daemon tick | enqueued → dequeued "
        "p50 / p95 | POST p99 | GET p99 | per run USS / PSS | rest of the stack USS | "
        "PostgreSQL connections | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(levels, key=int):
        level = levels[key]
        mem, daemon = level["memory"], level.get("daemon_sensor_ticks", {})
        lines.append(
            f"| {int(key):,} | {num(level['ramp']['ramp_s'])} s | "
            f"{figure(level['tick'], 'median_s', 's')} | "
            f"{figure(daemon, 'median_s', 's') if daemon.get('ticks') else 'n/a'} | "
            f"{dequeue(level['dequeue'])} | {api(level['api'], 'post')} | "
            f"{api(level['api'], 'get')} | {num(mem['per_run_uss_mib'])} / "
            f"{num(mem['per_run_pss_mib'])} MiB | {num(mem['stack_uss_mib'])} MiB | "
            f"{connections(level['pg_connections'])} | {num(level['load_average'][0])} |"
        )
    broke = r.get("broke")
    if broke:
        why = broke.get("not_tried") or broke.get("stopped", "?")
        if str(broke["level"]) in levels:
            lines += ["", f"**At {broke['level']:,} runs the climb stopped**: {why}."]
        elif broke.get("not_tried"):
            lines += ["", f"**{broke['level']:,} runs were not tried**: {why}."]
        else:
            lines += ["", f"**{broke['level']:,} runs were not reached**: {why}."]
        failures = broke.get("run_failures")
        errors = [
            *([broke["refused_connection"]] if broke.get("refused_connection") else []),
            *(failures if isinstance(failures, list) else []),
            *broke.get("log_errors", []),
        ]
        if errors:
            lines.append(f"First error: `{errors[0][:300]}`.")
    cost = levels[max(levels, key=int)].get("per_run_cost") if levels else None
    if cost:
        api_held = cost.get("api_connections")
        lines += [
            "",
            f"Each running run keeps {num(cost['pg_connections'])} PostgreSQL connections open "
            f"(over idle, per run, at the largest level)"
            + (f"; the API's 2 workers {api_held} more" if api_held is not None else "")
            + f". Dequeue interval {num(shape.get('dequeue_interval_s', '?'))} s.",
        ]
    for row in r.get("extrapolated", []):
        if row["runs"] == g["target_runs"]:
            lines += [
                "",
                f"Extrapolated to {row['runs']:,} runs at the largest level's cost per run: "
                f"{num(row['uss_gib'])} GiB USS ({num(row['pss_gib'])} GiB PSS) and "
                f"{row['pg_connections']:,} PostgreSQL connections.",
            ]
    top = g["runs_reached"]
    at = f"{top:,} runs in progress, {shape['parked']:,} parked"
    goals: list[Goal] = [
        (
            "concurrent runs in progress on PostgreSQL",
            f"{top:,}",
            f"{g['target_runs']:,}",
            g["runs_met"],
        ),
    ]
    if top:
        measures = [  # label, the goals' key of the figure, of its ceiling, of met; unit
            (f"waitpoint sensor tick, {at}", "tick_median_s", "tick_s_max", "tick_met", "s"),
            (
                f"queue decision (enqueued → dequeued) p95, {at}",
                "dequeue_p95_s",
                "dequeue_p95_s_max",
                "dequeue_met",
                "s",
            ),
            (
                f"POST p99 at {num(shape['api_post_per_second'])}/s, {at}",
                "post_p99_ms",
                "post_p99_ms_max",
                "post_met",
                "ms",
            ),
            (
                f"GET p99 at {num(shape['api_get_per_second'])}/s, {at}",
                "get_p99_ms",
                "get_p99_ms_max",
                "get_met",
                "ms",
            ),
        ]
        goals += [
            (
                label,
                f"{num(g[figure])} {unit}" if g[figure] is not None else "failed",
                f"≤ {num(g[ceiling])} {unit}",
                g[met_key],
            )
            for label, figure, ceiling, met_key, unit in measures
        ]
        goals += [
            (
                "memory per running run (USS / PSS, run worker and its children)",
                f"{num(g['per_run_uss_mib'])} / {num(g['per_run_pss_mib'])} MiB",
                "stated",
                None,
            ),
        ]
    return lines, goals


RENDERERS: dict[str, Callable[[dict[str, Any]], tuple[Lines, list[Goal]]]] = {
    "compile": compile_section,
    "overhead": overhead_section,
    "parallel": parallel_section,
    "celery": celery_section,
    "api": api_section,
    "waitpoints": waitpoints_section,
    "webhooks": webhooks_section,
    "queues": queues_section,
    "fairness": fairness_section,
    "media": media_section,
    "deploy": deploy_section,
    "events": events_section,
    "metrics": metrics_section,
    "analytics": analytics_section,
    "scale_runs": scale_runs_section,
}


# -- the document ----------------------------------------------------------------------------


def full_minutes() -> float:
    return sum(s.full_minutes for s in SECTIONS)


def header(results: dict[str, Any]) -> Lines:
    m = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines = [
        "# Benchmarks",
        "",
        "Written by `scripts/bench.sh` (`python -m bench`, bench/); do not edit by hand. Every",
        "figure comes from one run on one machine, and every comparison (ratios, side-by-side",
        "columns) from runs taken in that run, interleaved where they compete for the machine.",
        "Raw results: `bench/results/<stamp>.json` (and each section's log beside it).",
        "",
        f"Full run: `scripts/bench.sh` (about {full_minutes():.0f} min on 2 idle cores; every "
        "section in its own process, a failed one recorded and the others kept). Smoke run: "
        "`python -m bench --quick`. One section: `python -m bench --only <name>` "
        f"({', '.join(s.name for s in SECTIONS)}; results file only, `--docs` to rewrite this "
        "page with it alone).",
        "",
    ]
    if results.get("quick"):
        lines += [
            "> **Smoke run (`--quick`)**: small sample counts, figures not representative.",
            "",
        ]
    load_after = m.get("load_average_after", ["?"])[0]
    total = results.get("total_seconds")
    lines += [
        "| | |",
        "|---|---|",
        f"| run | {m['date']}, `{results.get('command', 'python -m bench')}`, "
        f"{round(total / 60, 1) if total else '?'} min, commit {m.get('commit', '?')} |",
        f"| machine | {m['cpu']}, {m['cores']} cores, {m.get('memory_gb', '?')} GB; "
        f"{m['platform']} |",
        f"| load average (1 min) | {m['load_average_before'][0]} before, {load_after} after |",
        f"| versions | Python {m['python']}, {packages}; SQLite {m['sqlite']}, PostgreSQL "
        f"{m['postgresql']}, Redis {m['redis']} |",
    ]
    for rerun in results.get("reruns", []):
        lines.append(
            f"| rerun | {', '.join(rerun['sections'])} measured again at {rerun['stamp']} "
            f"(`{rerun['command']}`); those sections show the rerun |"
        )
    lines.append("")
    return lines


def render(results: dict[str, Any]) -> str:
    sections = results["sections"]
    body: Lines = []
    goals: list[Goal] = []
    for section in SECTIONS:
        body += [f"## {section.title}", ""]
        found = sections.get(section.name)
        if found is None:
            body += ["Not run in this invocation.", ""]
            continue
        if "error" in found:
            body += [
                f"**Failed in this run** after {found.get('seconds', '?')} s: `{found['error']}`.",
                "",
            ]
            goals.append((section.title, "failed", "", None))
            continue
        try:
            lines, section_goals = RENDERERS[section.name](found["result"])
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
            lines = [f"**Rendering failed**: `{type(exc).__name__}: {exc}`."]
            section_goals = []
        body += [*lines, "", f"_Section time: {found.get('seconds', '?')} s._", ""]
        goals += section_goals
    summary = [
        "## Goals",
        "",
        "| measure | result | goal | met |",
        "|---|---|---|---|",
        *(f"| {m} | {r} | {g} | {met(ok)} |" for m, r, g, ok in goals),
        "",
    ]
    return "\n".join([*header(results), *summary, *body]).rstrip() + "\n"
