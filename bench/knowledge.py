"""Knowledge-base search at 10,000 chunks, full text on SQLite (FTS5, BM25): the default with
no embeddings model (docs/nodes.md#knowledgebasequery).

Generated documents (Zipf-distributed words from a fixed vocabulary, sentences and paragraphs,
as natural text is) are added through the store as the API adds them (read, chunked by
semantic-text-splitter at 800 characters with 100 of overlap, written with their chunks), until
the knowledge base holds 10,000 chunks. Then 50 queries of 2-5 words each, timed one by one as
a knowledgeBaseQuery node runs them (`DatabaseKnowledgeBaseStore.query`, topK 5, its own
transaction): p50 / p95 / max. Memory: the peak of Python allocations while the queries run
(tracemalloc) and the process's peak resident set (getrusage, indexing included).

`python -m bench.knowledge [--quick]` prints the result as JSON; `run(quick)` returns it.
"""

import json
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.common import percentile
from flowmaestro_dagster.settings import Settings
from flowmaestro_dagster.store import knowledge
from flowmaestro_dagster.store.db import dispose_engines, get_engine, migrate, session_scope
from flowmaestro_dagster.store.models import User

CHUNKS = 10_000
QUERIES = 50
CHUNKS_PER_DOCUMENT = 100
VOCABULARY = 5_000
GOALS = {"query_p95_ms_max": 50.0, "query_peak_mb_max": 50.0}


def vocabulary(rng: random.Random, size: int = VOCABULARY) -> list[str]:
    """Pronounceable made-up words, so stemming and stop words play no part."""
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.randint(1, 4)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)))
    return sorted(words)


def document_text(rng: random.Random, words: list[str], weights: list[float], chars: int) -> str:
    paragraphs: list[str] = []
    length = 0
    while length < chars:
        sentences = []
        for _ in range(rng.randint(3, 7)):
            picked = rng.choices(words, weights, k=rng.randint(6, 18))
            sentences.append(" ".join(picked).capitalize() + ".")
        paragraph = " ".join(sentences)
        paragraphs.append(paragraph)
        length += len(paragraph) + 2
    return "\n\n".join(paragraphs)


def main(chunks: int = CHUNKS, queries: int = QUERIES) -> dict[str, Any]:
    rng = random.Random(18)
    words = vocabulary(rng)
    weights = [1 / rank for rank in range(1, len(words) + 1)]  # Zipf: a few words are common
    settings = Settings()
    result: dict[str, Any] = {"shape": {"chunks_wanted": chunks, "queries": queries}}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'platform.db'}"
        migrate(url)
        engine = get_engine(url)
        with session_scope(engine) as session:
            user = User(email="bench@example.com")
            session.add(user)
            session.flush()
            owner = user.id
            kb_id = knowledge.create_knowledge_base(session, owner_id=owner, name="bench").id

        started = time.perf_counter()
        total = documents = 0
        doc_chars = CHUNKS_PER_DOCUMENT * (settings.knowledge.chunk_chars - 100)
        while total < chunks:
            text = document_text(rng, words, weights, doc_chars)
            source = knowledge.DocumentSource(kind="text", title=f"Document {documents}", text=text)
            prepared = knowledge.prepare_document(settings, source)
            with session_scope(engine) as session:
                knowledge.store_document(
                    session, settings=settings, owner_id=owner, kb_id=kb_id, prepared=prepared
                )
            total += len(prepared.chunks)
            documents += 1
        index_s = time.perf_counter() - started
        result["indexed"] = {
            "documents": documents,
            "chunks": total,
            "seconds": round(index_s, 2),
            "chunks_per_s": round(total / index_s, 1),
        }

        store = knowledge.DatabaseKnowledgeBaseStore(url, settings)
        store.query(owner, kb_id, "warm up", 5, 0.0)  # the first query loads the FTS pages
        texts = [" ".join(rng.choices(words[:2000], k=rng.randint(2, 5))) for _ in range(queries)]
        timings: list[float] = []
        found: list[int] = []
        tracemalloc.start()
        for text in texts:
            began = time.perf_counter()
            results = store.query(owner, kb_id, text, 5, 0.0)
            timings.append((time.perf_counter() - began) * 1000)
            found.append(len(results))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        dispose_engines()
    query_peak_mb = peak / 1024 / 1024
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    p95 = percentile(timings, 0.95)
    result["query_ms"] = {
        "p50": round(percentile(timings, 0.5), 2),
        "p95": round(p95, 2),
        "max": round(max(timings), 2),
    }
    result["results_per_query_mean"] = round(sum(found) / len(found), 2)
    result["memory_mb"] = {
        "query_peak_python": round(query_peak_mb, 2),
        "process_peak_rss": round(rss_mb, 1),
    }
    result["goals"] = {
        **GOALS,
        "query_met": p95 <= GOALS["query_p95_ms_max"],
        "memory_met": query_peak_mb <= GOALS["query_peak_mb_max"],
    }
    print(
        f"[knowledge] {total} chunks, full text on SQLite: query p50 "
        f"{result['query_ms']['p50']} ms, p95 {result['query_ms']['p95']} ms (goal ≤ "
        f"{GOALS['query_p95_ms_max']:g} ms: {'met' if result['goals']['query_met'] else 'NOT met'}); "
        f"peak Python memory while querying {query_peak_mb:.1f} MB (goal ≤ "
        f"{GOALS['query_peak_mb_max']:g} MB: {'met' if result['goals']['memory_met'] else 'NOT met'}), "
        f"process peak RSS {rss_mb:.0f} MB",
        flush=True,
    )
    return result


def run(quick: bool = False) -> dict[str, Any]:
    """The `knowledge` section: 10,000 chunks and 50 queries (`quick`: 2,000 and 20)."""
    return main(chunks=2_000, queries=20) if quick else main()


if __name__ == "__main__":
    json.dump(run("--quick" in sys.argv), sys.stdout, indent=2)
    print()
