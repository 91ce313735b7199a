"""docs/benchmarks.md renders from a results dict covering every section (no benchmark runs)."""

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench.report import render
from bench.sections import SECTIONS


def mm(median: float, low: float, high: float, **extra: Any) -> dict[str, Any]:
    return {"median_s": median, "min_s": low, "max_s": high, **extra}


def chain(extra: float) -> dict[str, Any]:
    variants = {
        "compiled_in_process": mm(0.40 + extra, 0.39, 0.45, overhead_ms_per_node=10.0 + extra),
        "compiled_threaded": mm(0.41 + extra, 0.40, 0.46, overhead_ms_per_node=10.5 + extra),
        "hand_written": mm(0.38 + extra, 0.37, 0.40, overhead_ms_per_node=9.0 + extra),
        "plain_python": mm(0.19, 0.19, 0.19, overhead_ms_per_node=0.0),
    }
    return {**variants, "compiled_over_hand_written": 1.05}


def timing(p50: float) -> dict[str, Any]:
    return {"samples": 3, "p50_s": p50, "p95_s": p50 + 1, "min_s": p50 - 0.5, "max_s": p50 + 1}


def submissions(per_second: float) -> dict[str, Any]:
    return {
        "submissions": 400,
        "errors": 0,
        "clients": 16,
        "seconds": 8.0,
        "per_second": per_second,
        "min_ms": 20.0,
        "p50_ms": 180.0,
        "p99_ms": 400.0,
        "launched": 0,
        "launched_per_second": 0.0,
        "deploy_runnable": True,
    }


def open_requests(rate: float, p99: float) -> dict[str, Any]:
    return {
        "offered_per_second": rate,
        "sent": round(rate * 10),
        "ok": round(rate * 10),
        "errors": {},
        "achieved_per_second": rate - 0.5,
        "p50_ms": 8.0,
        "p99_ms": p99,
        "max_ms": p99 * 2,
        "client_lag_p99_ms": 1.5,
    }


def open_loop(post_p99: float, get_p99: float, postgres: bool = False) -> dict[str, Any]:
    trips = {"statements": 3.0, "transactions": 1.0, "pings": 0.0, "round_trips": 5.0}
    found: dict[str, Any] = {
        "requests": 2500,
        "seconds": 10.1,
        "sent_per_second": 250.0,
        "api_cpu_s": 7.5,
        "api_cpu_ms_per_request": 3.0,
        "client_cpu_ms_per_request": 0.2,
        "connections_opened": 40,
        "load_average_before": 0.5,
        "load_average_after": 1.5,
        "post": open_requests(200.0, post_p99),
        "get": open_requests(50.0, get_p99),
        "round_trips": {"post": trips, "replay": trips, "get": trips},
        "post_p99_ms": post_p99,
        "get_p99_ms": get_p99,
        "goal_met": {"post_p99": post_p99 <= 100, "get_p99": get_p99 <= 50},
    }
    if postgres:
        found["database"] = {
            "cpu_s": 2.5,
            "sessions_opened": 0,
            "commits": 2500,
            "cpu_ms_per_request": 1.0,
            "commits_per_request": 1.0,
        }
    return found


def backend(per_second: float, postgres: bool = False) -> dict[str, Any]:
    return {
        "open_loop": open_loop(80.0 if postgres else 60.0, 30.0, postgres),
        "launch_excluded": submissions(per_second),
        "launch_included": {**submissions(per_second / 2), "launched": 200},
        "submit_to_node_running": {**timing(1.6), "timed_out": 0},
        "run_throughput": {
            "runs": 60,
            "users": 4,
            "statuses": {"201": 60},
            "succeeded": 60,
            "submitted_s": 0.7,
            "all_finished_s": 17.0 if postgres else 15.0,
            "started_per_second": 3.6 if postgres else 4.0,
            "finished_per_second": 3.5,
            "cpu_s_per_run": 0.5,
            "cpu_bound_per_second": 4.0,
            "of_cpu_bound": 0.9 if postgres else 1.0,
            "cores": 2,
            "load_average_before": 0.5,
            "load_average_after": 2.0,
        },
    }


def hook_load(p99: float, **extra: Any) -> dict[str, Any]:
    return {
        "offered_per_second": 200,
        "seconds": 10,
        "sent": 2000,
        "accepted": 2000,
        "refused": {},
        "sent_per_second": 199.5,
        "answered_per_second": 198.0,
        "p50_ms": 12.0,
        "p95_ms": 40.0,
        "p99_ms": p99,
        "max_ms": 150.0,
        "min_ms": 4.0,
        "from_send_p50_ms": 11.0,
        "from_send_p99_ms": 70.0,
        "client_lag_p99_ms": 3.0,
        "client_lag_max_ms": 9.0,
        "api_cpu_ms_per_delivery": 6.5,
        "client_cpu_ms_per_delivery": 2.5,
        "load_average_before": 0.4,
        "load_average_after": 1.9,
        **extra,
    }


def hook_backend(p99: float) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {
            "offered_per_second": rate,
            "answered_per_second": rate,
            "p50_ms": 10.0,
            "p99_ms": 30.0,
            "refused": {},
        }
        for rate in (25, 50, 75, 100, 150)
    ]
    return {
        "launch_excluded": {
            "workers_1": {"api_workers": 1, "load": hook_load(1900.0, refused={"500": 3})},
            "workers_2": {
                "api_workers": 2,
                "ramp": {"steps": steps, "kept_up_per_second": 150, "seconds": 3},
                "load": hook_load(p99),
                "one_at_a_time": {
                    "samples": 50,
                    "new_p50_ms": 7.0,
                    "new_p95_ms": 12.0,
                    "duplicate_p50_ms": 5.5,
                    "duplicate_p95_ms": 9.0,
                    "duplicate_min_ms": 4.0,
                    "duplicate_max_ms": 10.0,
                    "duplicate_wrong": 0,
                },
            },
        },
        "launch_included": {
            "load": hook_load(p99 * 2, launched=300, launch_grace_s=5),
            "api_workers": 2,
            "deploy_runnable": True,
            "delivery_to_first_node": {
                **timing(1.4),
                "p90_s": 2.0,
                "timed_out": 0,
                "answered_p50_s": 0.01,
                "run_created_p50_s": 0.3,
                "run_started_p50_s": 0.9,
                "source": "STEP_START of the run's first step, Dagster event log",
            },
        },
    }


def q(p50: float) -> dict[str, float]:
    return {"min": p50 / 2, "p50": p50, "p95": p50 * 2, "max": p50 * 3}


def tick(seconds: float) -> dict[str, Any]:
    return {
        "parked": 10_000,
        "ticks": 5,
        "tick_median_s": seconds,
        "tick_min_s": seconds,
        "tick_max_s": seconds * 2,
        "last_tick": {},
    }


def deploy_size(size: int, seconds: float, shards: int = 32) -> dict[str, Any]:
    return {
        "workflows": size,
        "jobs_per_location": round(size / shards),
        "insert_s": 1.0,
        "warm_s": 2.0,
        "deploy_to_runnable": mm(seconds, seconds, seconds, samples=3),
        "reload_and_visible": mm(seconds - 0.1, seconds - 0.1, seconds, samples=3),
        "deploy_to_launched": mm(seconds + 0.5, seconds + 0.4, seconds + 0.7, samples=3),
        "shard_snapshot_s": seconds / 2,
        "memory_mb": {"code_server": size // 6 + 180, "webserver": 300, "daemon": 280},
        "load": {"before": [1.5, 1.2, 1.0], "after": [2.5, 1.4, 1.1]},
    }


def deploy_variant(
    code_server: str, shards: int, sizes: dict[int, float], met_at: dict[str, bool]
) -> dict[str, Any]:
    return {
        "code_server": code_server,
        "code_server_default": "shared",
        "shards": shards,
        "shards_default": 32,
        "corpus_definitions": 220,
        "samples": 3,
        "sizes": {str(n): deploy_size(n, seconds, shards) for n, seconds in sizes.items()},
        "largest_over_smallest": round(max(sizes.values()) / min(sizes.values()), 2),
        "goals": {
            "runnable_s_max": {"1000": 3.0, "10000": 5.0},
            "met_at": met_at,
            "met": all(met_at.values()),
        },
    }


def events_variant(p99: float, rss_after: int) -> dict[str, Any]:
    def stage(p99_s: float, p99_ms: float, rss: int) -> dict[str, Any]:
        latency = {"samples": 120, "p50_s": 0.3, "p99_s": p99_s, "min_s": 0.1, "max_s": p99_s}
        request = {"requests": 500, "p50_ms": 3.0, "p99_ms": p99_ms, "max_ms": 20.0}
        return {
            "rss_kib": rss,
            "cpu_share": 0.01,
            "requests": {"/health": request, "/executions/abc": request, "failed": {}},
            "latency": {**latency, "executions": 10, "replayed": 0},
        }

    return {
        "without": stage(0.5, 8.0, 102400),
        "with_idle": stage(p99, 10.0, rss_after),
        "idle": {"subscribers": 1000, "opened": 1000, "failed": {}, "open_s": 4.5},
        "rss_per_subscriber_kib": round((rss_after - 102400) / 1000, 1),
        "requests_p99_ratio": {"health": 1.25, "execution": 1.25},
    }


RESULTS: dict[str, Any] = {
    "stamp": "20260101T000000",
    "quick": False,
    "command": "python -m bench",
    "total_seconds": 1400.0,
    "machine": {
        "date": "2026-01-01 00:00 UTC",
        "cpu": "Test CPU",
        "cores": 2,
        "memory_gb": 23.0,
        "platform": "Linux",
        "python": "3.11.7",
        "packages": {"dagster": "1.13.27", "fastapi": "0.115"},
        "sqlite": "3.40.1",
        "postgresql": "15.4",
        "redis": "7.0.15",
        "commit": "abc1234",
        "load_average_before": [0.1, 0.1, 0.1],
        "load_average_after": [1.9, 1.5, 1.0],
    },
    "sections": {
        "compile": {
            "seconds": 20.0,
            "result": {
                "corpus_compile": {
                    "files": 224,
                    "rejected": 4,
                    "min_ms": 0.5,
                    "p50_ms": 3.05,
                    "p95_ms": 8.79,
                    "max_ms": 11.95,
                },
                "large_compile": {
                    "nodes": 500,
                    "repeats": 5,
                    "best_s": 0.343,
                    "median_s": 0.406,
                    "max_s": 0.5,
                },
                "goals": {
                    "corpus_p95_ms_max": 20.0,
                    "large_median_s_max": 0.5,
                    "corpus_met": True,
                    "large_met": True,
                },
            },
        },
        "overhead": {
            "seconds": 60.0,
            "result": {
                "nodes": 20,
                "node_work_ms": 10.0,
                "repeats": 9,
                "instances": {"ephemeral": chain(0.0), "persistent_sqlite": chain(0.46)},
                "persistent_adds_ms_per_node": 23.0,
                "goals": {
                    "compiled_over_hand_written_max": 1.1,
                    "persistent_ms_per_node_max": 40.0,
                    "compiled_over_hand_written_met": True,
                    "persistent_met": True,
                },
            },
        },
        "parallel": {
            "seconds": 200.0,
            "result": {
                "shape": {
                    "width": 8,
                    "branch_s": 0.5,
                    "chain": 20,
                    "node_s": 0.01,
                    "max_concurrent": 10,
                    "repeats": 7,
                },
                "workloads": {
                    name: {
                        "threaded": mm(0.6, 0.55, 0.7, runs=7, cpu_median_s=0.3),
                        "in_process": mm(4.2, 4.1, 4.4, runs=7, cpu_median_s=0.3),
                        "thread_pool_floor": mm(0.5, 0.5, 0.51, runs=7),
                        "prefect": mm(0.9, 0.8, 2.9, runs=7),
                    }
                    for name in ("W1", "W2", "W3")
                },
                "threaded_over_in_process": {"W1": 1.02, "W2": 0.8, "W3": 0.14},
                "threaded_over_in_process_cpu": {"W1": 1.0, "W2": 1.1, "W3": 1.0},
                "prefect": {"version": "3.9.1", "database": "sqlite (default)"},
                "goals": {
                    "W3_threaded_max_s": 0.68,
                    "W1_threaded_over_in_process_max": 1.1,
                    "W3_met": True,
                    "W1_met": True,
                },
                "load_average": {"before": [0.1, 0.1, 0.1], "after": [1.0, 0.5, 0.2]},
            },
        },
        "celery": {
            "seconds": 1.0,
            "result": {"measured": False, "reason": "no Celery executor exposed yet"},
        },
        "scale_runs": {
            "seconds": 50.0,
            # a real `python -m bench.scale_runs --quick` result (20 runs, 1,000 parked)
            "result": json.loads(
                (Path(__file__).parent / "bench_scale_runs_quick.json").read_text()
            ),
        },
        "api": {
            "seconds": 240.0,
            "result": {
                "sqlite": backend(60.0),
                "postgres": backend(90.0, postgres=True),
                "postgres_over_sqlite_per_second": {"launch_excluded": 1.5, "launch_included": 1.5},
                "goals": {
                    "post_p99_ms_max": 100.0,
                    "get_p99_ms_max": 50.0,
                    "rate_per_second": 200.0,
                    "post_met": True,
                    "get_met": True,
                    "postgres_over_sqlite_post_p99": 1.33,
                    "postgres_met": False,
                    "first_node_p50_s": {"sqlite": 0.5, "postgres": 0.6},
                    "first_node_p50_s_max": 1.0,
                    "first_node_met": True,
                    "started_per_second": {"sqlite": 4.0, "postgres": 3.6},
                    "baseline_started_per_second": {
                        "sqlite": 2.94,
                        "postgres": 2.2,
                        "commit": "6bd7a50",
                    },
                    "over_baseline": {"sqlite": 2.34, "postgres": 1.72},
                    "throughput_met": False,
                },
                "shape": {
                    "seconds": 8,
                    "clients": 16,
                    "samples": 10,
                    "api_workers": 2,
                    "open_loop": {
                        "seconds": 10,
                        "post_per_second": 200.0,
                        "get_per_second": 50.0,
                        "connections": 256,
                        "reads": 20,
                    },
                },
            },
        },
        "waitpoints": {
            "seconds": 180.0,
            "result": {
                "sqlite_tick": tick(0.2),
                "postgres_tick": tick(0.3),
                "resume": {
                    "approval_to_resumed_step": timing(3.1),
                    "due_to_resumed_step": timing(2.2),
                },
                "goals": {
                    "approval_p50_s_max": 6.0,
                    "tick_s_max": 1.0,
                    "approval_met": True,
                    "tick_met": True,
                },
                "samples": 8,
            },
        },
        "webhooks": {
            "seconds": 420.0,
            "result": {
                "sqlite": hook_backend(45.0),
                "postgres": hook_backend(60.0),
                "shape": {
                    "rate": 200,
                    "seconds": 10,
                    "samples": 20,
                    "duplicates": 50,
                    "connections": 256,
                    "api_workers": 2,
                    "launch_grace_s": 5,
                    "ramp_rates": [25, 50, 75, 100, 150, 200],
                    "ramp_seconds": 3,
                    "hook_rate_limit": "100000/second;1000000/minute",
                },
                "goals": {
                    "p99_ms_max": 100.0,
                    "kept_up_per_second_min": 200.0,
                    "first_node_p50_s_max": 2.0,
                    "p99_met": False,
                    "kept_up_met": False,
                    "first_node_met": True,
                },
            },
        },
        "queues": {
            "seconds": 300.0,
            "result": {
                "settings": {"max_concurrent_runs": 10},
                "shape": {"probes": 15, "backlog": 200, "pairs": 3},
                "decision_empty": {
                    "queued": 0,
                    "dagster_dequeue_decision_ms": q(2.0),
                    "why_queued_replay_ms": q(3.0),
                },
                "empty_queue": {
                    "runs": 15,
                    "enqueued_to_dequeued_s": q(0.5),
                    "enqueued_to_started_s": q(1.5),
                    "dequeued_to_started_s": q(1.0),
                },
                "backlog_submit_s": 30.0,
                "decision_backlog": {
                    "queued": 200,
                    "dagster_dequeue_decision_ms": q(40.0),
                    "why_queued_replay_ms": q(50.0),
                },
                "queue_backlog": {
                    "runs": 15,
                    "enqueued_to_dequeued_s": q(0.7),
                    "enqueued_to_started_s": q(1.8),
                    "dequeued_to_started_s": q(1.1),
                },
                "get_queued_execution_ms": q(60.0),
                "why_queued_example": {"queue_position": 3, "queued_reason": "paused"},
                "granularity_run_gap_s": [0.9, 1.0, 1.1],
                "granularity_op_gap_s": [-7.0, -6.9, -7.1],
                "backlog_over_empty_start_p50": 1.2,
            },
        },
        "fairness": {
            "seconds": 600.0,
            "result": {
                "settings": {"max_concurrent_runs": 10, "user_run_limit": 3},
                "shape": {"flood": 1000, "light": 10},
                "idle": {
                    "runs": 10,
                    "enqueued_to_dequeued_s": {**q(1.0), "mean": 1.1},
                    "enqueued_to_started_s": {**q(5.0), "mean": 5.5},
                    "makespan_s": 20.0,
                },
                "flood_submit_s": 200.0,
                "flood_queued_at_burst": 900,
                "flooded": {
                    "runs": 10,
                    "enqueued_to_dequeued_s": {**q(1.2), "mean": 1.3},
                    "enqueued_to_started_s": {**q(6.0), "mean": 6.6},
                    "makespan_s": 24.0,
                },
                "flood_still_queued_after": 870,
                "throughput_runs_per_s": 0.5,
                "fifo_estimate_first_wait_s": 1800.0,
                "enqueued_to_dequeued_s_p50_ratio": 1.2,
                "enqueued_to_dequeued_s_mean_ratio": 1.18,
                "enqueued_to_started_s_p50_ratio": 1.2,
                "enqueued_to_started_s_mean_ratio": 1.2,
                "makespan_ratio": 1.2,
            },
        },
        "deploy": {
            "seconds": 300.0,
            "result": {
                "variants": [
                    deploy_variant(
                        "shared",
                        32,
                        {10: 0.2, 200: 0.25, 1000: 0.4, 10000: 2.5},
                        {"1000": True, "10000": True},
                    ),
                    deploy_variant(
                        "per_location", 1, {10: 2.0, 200: 10.0, 1000: 50.0}, {"1000": False}
                    ),
                ]
            },
        },
        "metrics": {
            "seconds": 600.0,
            "result": {
                "backends": {
                    backend: {
                        "executions": 10000,
                        "node_attempts": 47500,
                        "dagster_runs": 9750,
                        "histogram_reads_runs": backend == "postgres",
                        "seed_s": 100.0,
                        "response_bytes": 7300,
                        "samples": 200,
                        "cold_scrapes": 5,
                        "cold_first_ms": 4000.0,
                        "cold_total_s": 15.5,
                        "p50_ms": p50,
                        "p99_ms": 60.0,
                        "max_ms": 80.0,
                    }
                    for backend, p50 in (("sqlite", 40.0), ("postgres", 30.0))
                },
                "shape": {"workflows": 20, "users": 10},
            },
        },
        "media": {
            "seconds": 150.0,
            "result": {
                "rows": [
                    {
                        "family": "documents",
                        "case": "pdf_generate",
                        "node": "pdfGeneration",
                        "input": "Markdown report (~20 A4 pages)",
                        "first_call_ms": 1377.3,
                        "median_ms": 926.5,
                        "python_peak_mb": 20.6,
                        "max_rss_mb": 146.1,
                    }
                ],
                "errors": {"web": "RuntimeError: no chromium"},
                "knowledge": {
                    "indexed": {"chunks": 10031},
                    "query_ms": {"p50": 3.5, "p95": 8.9},
                    "memory_mb": {"query_peak_python": 0.2, "process_peak_rss": 152.0},
                    "goals": {
                        "query_p95_ms_max": 50.0,
                        "query_peak_mb_max": 50.0,
                        "query_met": True,
                        "memory_met": True,
                    },
                },
            },
        },
        "analytics": {
            "seconds": 500.0,
            "result": {
                "backends": {
                    backend: {
                        "executions": 1_000_000,
                        "seed_s": seed,
                        "cases": {
                            f"{which}_{days}d": {
                                "workflow": which,
                                "range_days": days,
                                "workflow_executions": total,
                                "range_executions": total * days // 90,
                                "all_counted": True,
                                "nodes": 6,
                                "samples": 100,
                                "p50_ms": p50,
                                "p99_ms": p50 + 20,
                                "max_ms": p50 + 25,
                                "cpu_p50_ms": 60.0 * days / 30,
                            }
                            for which, total in (("busiest", 278000), ("median", 25000))
                            for days in (1, 30)
                        },
                    }
                    for backend, seed, p50 in (("sqlite", 180.0, 90.0), ("postgres", 90.0, 75.0))
                },
                "shape": {"workflows": 20, "history_days": 90, "queries": 100},
                "load": {"before": [1.2, 1.0, 0.9], "after": [1.9, 1.2, 1.0]},
                "goals": {
                    "p99_ms_max": 200.0,
                    "worst_p99_ms": 110.0,
                    "all_counted": True,
                    "met": True,
                },
            },
        },
        "events": {
            "seconds": 400.0,
            "result": {
                "variants": {
                    "one_parked": events_variant(0.6, 122880),
                    "many_queued": events_variant(0.9, 133120),
                },
                "shape": {"nodes": 12, "idle_subscribers": 1000, "executions": 10, "requests": 500},
                "goals": {
                    "latency_p99_s_max": 1.0,
                    "requests_p99_ratio_max": 1.5,
                    "latency_met": True,
                    "requests_met": True,
                },
            },
        },
    },
}


def test_fake_results_cover_every_section() -> None:
    assert set(RESULTS["sections"]) == {s.name for s in SECTIONS}


def test_render_shows_every_section_with_its_figures_and_goals() -> None:
    text = render(RESULTS)

    assert "Rendering failed" not in text
    assert "Failed in this run" not in text
    assert "Smoke run (`--quick`)" not in text
    for section in SECTIONS:
        assert f"## {section.title}" in text
    assert (
        "| deploy → runnable at 10000 workflows, 32 location(s), one shared code server | "
        "2.5 s | ≤ 5 s at 10000 | yes |" in text
    )
    assert (
        "| deploy → runnable at 1000 workflows, 1 location(s), a code server per location, "
        "restarted on each reload | 50 s | (for comparison) | not judged |" in text
    )
    assert (
        "| code-server memory at 10000 workflows (all locations, one process) | 1846 MiB | "
        "stated, no per-workflow process | not judged |" in text
    )
    assert "| approval → resumed, p50 | 3.1 s | ≤ 6.0 s | yes |" in text
    assert (
        "| a light user's queue wait with a flood queued / idle (worst of p50, mean) | 1.2 | "
        "≤ 3 | yes |" in text
    )
    assert "### 32 location(s), one shared code server (the default)" in text
    assert "| 10000 | 312 | 2.5 s [2.5, 2.5] |" in text
    assert "| 1846 / 300 / 280 MiB | 1.5 → 2.5 |" in text
    assert (
        "At 1000 workflows, deploy → runnable: **0.4 s** with the default configuration, 50 s "
        "with 1 location(s), a code server per location, restarted on each reload (125 times "
        "as long)." in text
    )
    assert "**Not measured: no Celery executor exposed yet.**" in text
    assert "| warm scrape p50 / p99 / max | 40 / 60 / 80 ms | 30 / 60 / 80 ms |" in text
    assert "| cold: scrapes, first, total | not measured (see below) | 5, 4000 ms, 15.5 s |" in text
    assert (
        "| one each on 1,000 queued executions | 0.3 / 0.5 s [0.1, 0.5] | 0.3 / 0.9 s [0.1, 0.9] "
        "| 3 / 8 ms → 3 / 10 ms | 3 / 8 ms → 3 / 10 ms | 100 → 130 MiB (30.7 KiB) | 0.01 → 0.01 "
        "| 4.5 s |" in text
    )
    assert (
        "| live event latency p99 with 1,000 subscribers (worse of the two ways) | 0.9 s | "
        "≤ 1 s | yes |" in text
    )
    assert "| W3 | 0.6 s [0.55, 0.7] |" in text
    assert (
        "| busiest, 30 day(s) | 92,666 (278,000) | 90 / 110 / 115 ms | 75 / 95 / 100 ms | 60 ms "
        "| yes |" in text
    )
    assert (
        "| analytics p99 at 1,000,000 executions (worst workflow and range, worse of SQLite, "
        "PostgreSQL), every execution counted | 110 ms | ≤ 200 ms | yes |" in text
    )
    assert "| submissions per second, launch excluded | 60.0 | 90.0 | 1.5 |" in text
    assert "| runs started per second | 4 | 3.6 |" in text
    assert "| before this work (commit 6bd7a50) | 2.94 | 2.2 |" in text
    assert "| CPU seconds per run, all processes | 0.5 s | 0.5 s |" in text
    assert (
        "| submit → first node running p50 (worse of SQLite, PostgreSQL) | 0.6 s | ≤ 1 s | yes |"
        in text
    )
    assert (
        "| runs started per second, SQLite / PostgreSQL (x before) | 4 / 3.6 (2.34x / 1.72x) "
        "| ≥ 2x before on both | **no** |" in text
    )
    assert "## 10,000 parked and many concurrent runs" in text
    assert "| POST → 201, p50 / p99 / max | 8 / 60 / 120 ms | 8 / 80 / 160 ms |" in text
    assert "| PostgreSQL CPU per request | in the API process | 1 ms; 1 commits a request" in text
    assert (
        "| API submission p99 at 200/s, 2 workers, launch excluded (worse of SQLite, "
        "PostgreSQL) | 80 ms | ≤ 100 ms | yes |" in text
    )
    assert (
        "| GET of an execution p99 at the same load (50/s of GETs; worse of SQLite, "
        "PostgreSQL) | 30 ms | ≤ 50 ms | yes |" in text
    )
    assert (
        "| PostgreSQL / SQLite, submission p99 at 200/s | 1.33 | ≤ 1 (at least as fast) "
        "| **no** |" in text
    )
    assert "200 queued" in text
    assert "Prefect 3.9.1" in text
    assert "adds **23.0 ms per node**" in text
    assert (
        "| 200/s, 2 workers, launch excluded: 202 p50 / p95 / p99 | 12 / 40 / 45 ms | "
        "12 / 40 / 60 ms |" in text
    )
    assert (
        "| … achieved rates; failed; load average (1 min) before → after | sent 199.5/s, "
        "answered 198/s; 3 x 500; 0.4 → 1.9 |" in text
    )
    assert (
        "| 200/s, 1 worker, launch excluded: 202 p50 / p95 / p99 | 0.01 / 0.04 / 1.90 s |" in text
    )
    assert "| one at a time: duplicate → 200, p50 / p95 | 5.5 / 9 ms | 5.5 / 9 ms |" in text
    assert "| delivery → first node running, p50 / p90 [min, max] | 1.4 / 2 s [0.9, 2.4] |" in text
    assert (
        "| webhook delivery → 202 p99 at 200/s, 2 workers, launch included (worse of SQLite, "
        "PostgreSQL) | 120 ms | ≤ 100 ms | **no** |" in text
    )
    assert "| ramp: highest rate kept up (p99 ≤ 100 ms) | 150/s | 150/s |" in text
    assert "At 200/s offered the API answered at most 198/s. A delivery costs" in text
    assert "so 2 cores take at most about 308 a second" in text
    assert (
        "| webhook deliveries a second with 202 p99 ≤ 100 ms, 2 workers, launch excluded (worse "
        "of SQLite, PostgreSQL) | 150/s | ≥ 200/s | **no** |" in text
    )
    assert (
        "| webhook delivery → first node running, p50 (worse of SQLite, PostgreSQL) | 1.4 s | "
        "≤ 2 s | yes |" in text
    )


def test_media_rows_and_the_knowledge_base_goal_render() -> None:
    text = render(RESULTS)
    assert (
        "| pdfGeneration | Markdown report (~20 A4 pages) | 926.5 ms | 1377.3 ms | 20.6 MB | "
        "146.1 MB |" in text
    )
    assert "**web failed:** RuntimeError: no chromium" in text
    assert "| knowledge base query p95 | 8.9 ms | ≤ 50 ms | yes |" in text


def test_a_failed_section_is_reported_and_the_others_still_render() -> None:
    results = copy.deepcopy(RESULTS)
    results["sections"]["api"] = {"seconds": 12.0, "error": "RuntimeError: boom"}

    text = render(results)

    assert "**Failed in this run** after 12.0 s: `RuntimeError: boom`." in text
    assert "| API submissions | failed |  | not judged |" in text
    assert "## Deploy → runnable" in text and "| 10000 | 312 | 2.5 s [2.5, 2.5] |" in text


def test_sections_not_run_and_quick_runs_say_so() -> None:
    results = copy.deepcopy(RESULTS)
    results["quick"] = True
    del results["sections"]["queues"]

    text = render(results)

    assert "**Smoke run (`--quick`)**" in text
    assert "## Run queues\n\nNot run in this invocation." in text


@pytest.mark.parametrize("section", [s.name for s in SECTIONS if s.name != "celery"])
def test_a_section_whose_shape_changed_shows_a_rendering_error(section: str) -> None:
    results = copy.deepcopy(RESULTS)
    results["sections"][section]["result"] = {"unexpected": 1}

    text = render(results)

    assert "**Rendering failed**" in text


def test_measured_celery_figures_render_side_by_side() -> None:
    results = copy.deepcopy(RESULTS)
    results["sections"]["celery"]["result"] = {
        "measured": True,
        "workers": 2,
        "concurrency": 4,
        "broker": "redis://127.0.0.1:6379/13",
        "repeats": 5,
        "workloads": {
            "W1": {"threads": mm(0.6, 0.5, 0.7), "celery": mm(1.2, 1.1, 1.5)},
            "W3": {"threads": mm(0.9, 0.8, 1.0), "celery": mm(1.6, 1.5, 1.7)},
        },
        "celery_over_threads": {"W1": 2.0, "W3": 1.78},
        "per_step_overhead_ms": {"celery": 72.5, "threads": 31.0},
        "worker_jobs": {"cached": 148, "built": 2},
        "goals": {
            "per_step_overhead_ms_max": 100.0,
            "W3_celery_over_threads_max": 1.5,
            "per_step_met": True,
            "W3_met": False,
        },
        "load_average": {"before": [1.5, 1.0, 1.0], "after": [3.25, 2.0, 1.0]},
        "executor": "celery_executor",
        "backend": "sqlite",
    }

    text = render(results)

    assert "| W1 | 0.6 s [0.5, 0.7] | 1.2 s [1.1, 1.5] | 2.0 |" in text
    assert "2 `flowmaestro worker` processes of 4 pool processes each" in text
    assert "launched runs on a real `dagster dev` (SQLite)" in text
    assert "72.5 ms on Celery workers, 31.0 ms on the run's threads" in text
    assert "from the worker's cache: 148; built: 2" in text
    assert "Load average before / after: 1.50 / 3.25." in text
    assert "| Celery per-step overhead (W1 chain) | 72.5 ms | ≤ 100 ms | yes |" in text
    assert "| W3 on 2 Celery workers / threaded | 1.78 | ≤ 1.5 | **no** |" in text


def test_celery_results_from_before_the_goals_still_render() -> None:
    results = copy.deepcopy(RESULTS)
    results["sections"]["celery"]["result"] = {
        "measured": True,
        "workers": 2,
        "broker": "redis://127.0.0.1:6379/13",
        "repeats": 5,
        "workloads": {"W1": {"threads": mm(0.6, 0.5, 0.7), "celery": mm(1.2, 1.1, 1.5)}},
        "celery_over_threads": {"W1": 2.0},
        "executor": "celery_executor",
    }

    text = render(results)

    assert "| W1 | 0.6 s [0.5, 0.7] | 1.2 s [1.1, 1.5] | 2.0 |" in text
    assert "Celery per-step overhead" not in text


def test_a_rerun_merged_into_a_full_run_is_named_in_the_header() -> None:
    results = copy.deepcopy(RESULTS)
    results["reruns"] = [
        {"stamp": "20260101T010000", "command": "python -m bench --only api", "sections": ["api"]}
    ]
    text = render(results)
    assert "| rerun | api measured again at 20260101T010000 (`python -m bench --only api`)" in text


def test_a_webhook_ramp_that_kept_up_with_no_step_says_none() -> None:
    results = copy.deepcopy(RESULTS)
    ramp = results["sections"]["webhooks"]["result"]["postgres"]["launch_excluded"]["workers_2"]
    ramp["ramp"]["kept_up_per_second"] = None

    text = render(results)

    assert "| ramp: highest rate kept up (p99 ≤ 100 ms) | 150/s | none |" in text
    assert "launch excluded (worse of SQLite, PostgreSQL) | none | ≥ 200/s | **no** |" in text
