"""Knowledge bases: indexing (text, PDF, web pages), full-text ranking on SQLite FTS5 and
PostgreSQL tsvector, hybrid search with sqlite-vec / pgvector against a local fake embeddings
endpoint, owner isolation, caps, and the knowledgeBaseQuery node as a function."""

import itertools
import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from flowmaestro_dagster.errors import NodeConfigurationError
from flowmaestro_dagster.lang.state import ExecutionState
from flowmaestro_dagster.nodes import get_executor
from flowmaestro_dagster.nodes.base import NodeContext, NodeResult
from flowmaestro_dagster.nodes.knowledge import (
    KnowledgeBaseNotFound,
    config_problems,
    execute_knowledge_base_query,
)
from flowmaestro_dagster.settings import HttpSettings, KnowledgeSettings, Settings
from flowmaestro_dagster.spec.configs import normalise_config
from flowmaestro_dagster.spec.models import NodeSpec
from flowmaestro_dagster.spec.node_types import resolve_type
from flowmaestro_dagster.store import knowledge
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.knowledge import DocumentSource
from flowmaestro_dagster.store.models import (
    KnowledgeBase,
    KnowledgeChunk,
    KnowledgeDocument,
    User,
)
from flowmaestro_dagster.tags import USER_TAG
from flowmaestro_dagster.testing import EchoServer, FakeLLMServer, FakeReply, RecordedRequest
from flowmaestro_dagster.testing.http_server import EchoRequest
from tests.services import database_from, migrated_template

CATS = "Cats purr when they are content. A cat sleeps most of the day and purrs in the sun."
DOGS = "Dogs bark at strangers. A dog may sleep near the door, but dogs rarely purr."
BREAD = "Bread is baked from flour, water and yeast. Fresh bread smells wonderful."


# -- helpers ------------------------------------------------------------------------------------


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal valid PDF, one Helvetica text line per line of each page's text."""

    def escape(line: str) -> str:
        return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        shown = " ".join(f"({escape(line)}) Tj T*" for line in text.split("\n"))
        stream = f"BT /F1 12 Tf 72 720 Td 14 TL {shown} ET".encode("latin-1")
        objects.append(
            (
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>"
            ).encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    info = ""
    if title is not None:
        objects.append(f"<< /Title ({escape(title)}) >>".encode("latin-1"))
        info = f" /Info {len(objects)} 0 R"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)


ARTICLE = b"""<html><head><title>All about cats</title></head><body>
<nav><a href="/">Home</a> | <a href="/shop">Shop zeppelins</a></nav>
<article><h1>All about cats</h1>
<p>Cats are small carnivorous mammals that people have kept as companions for thousands of
years. A cat spends most of the day asleep and purrs when it is content.</p>
<p>Kittens learn to hunt by playing with their siblings; their whiskers help them judge gaps
in the dark.</p></article>
<footer>Copyright 2024 zeppelin marketplace, all rights reserved</footer></body></html>"""


class PageServer(EchoServer):
    """The echo server plus pages at fixed paths: path -> (status, content type, body)."""

    name = "page server"

    def __init__(self, pages: dict[str, tuple[int, str, bytes]]) -> None:
        self.pages = pages
        super().__init__()

    def respond(self, request: EchoRequest) -> tuple[int, dict[str, str], Any]:
        path = request.path.split("?", 1)[0]
        if path in self.pages:
            status, content_type, body = self.pages[path]
            return status, {"Content-Type": content_type}, body
        return super().respond(request)


def loopback(settings: Settings | None = None, **knowledge_caps: Any) -> Settings:
    """Settings whose SSRF guard lets the test's local servers through."""
    base = settings or Settings()
    return base.model_copy(
        update={
            "http": HttpSettings(allow_loopback=True),
            "knowledge": KnowledgeSettings(**knowledge_caps),
        }
    )


def make_user(url: str, email: str = "ada@example.com") -> str:
    with session_scope(get_engine(url)) as session:
        user = User(email=email)
        session.add(user)
        session.flush()
        return user.id


def make_kb(url: str, owner: str, name: str = "Pets") -> str:
    with session_scope(get_engine(url)) as session:
        return knowledge.create_knowledge_base(session, owner_id=owner, name=name).id


def add(
    url: str, settings: Settings, owner: str, kb_id: str, source: DocumentSource
) -> KnowledgeDocument:
    with session_scope(get_engine(url)) as session:
        return knowledge.add_document(
            session, settings=settings, owner_id=owner, kb_id=kb_id, source=source
        )


def text_doc(text: str, title: str | None = None) -> DocumentSource:
    return DocumentSource(kind="text", title=title, text=text)


def search(
    url: str,
    settings: Settings,
    owner: str,
    kb_id: str,
    text: str,
    top_k: int = 5,
    threshold: float = 0.0,
) -> tuple[list[dict[str, Any]], str]:
    with session_scope(get_engine(url)) as session:
        return knowledge.search(
            session,
            settings=settings,
            owner_id=owner,
            kb_id=kb_id,
            text=text,
            top_k=top_k,
            threshold=threshold,
        )


def counts(url: str) -> dict[str, int]:
    with session_scope(get_engine(url)) as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (KnowledgeBase, KnowledgeDocument, KnowledgeChunk)
        } | {
            "vectors": session.scalar(sa.text("SELECT count(*) FROM kb_chunk_vectors")) or 0
            if _has_vector_table(session)
            else 0
        }


def _has_vector_table(session: Any) -> bool:
    return "kb_chunk_vectors" in sa.inspect(session.connection()).get_table_names()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db_template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    kind = request.param
    with migrated_template(kind, tmp_path_factory.mktemp(f"kb-{kind}")) as template:
        yield kind, template


@pytest.fixture
def db(db_template: tuple[str, str], tmp_path: Path) -> Iterator[str]:
    """A migrated platform database of this test alone, on SQLite and on PostgreSQL."""
    kind, template = db_template
    with database_from(kind, template, tmp_path) as url:
        yield url


@pytest.fixture
def pets(db: str) -> tuple[str, str, str]:
    """(database URL, owner, knowledge base) holding the cats, dogs and bread documents."""
    owner = make_user(db)
    kb_id = make_kb(db, owner)
    for title, text in (("Cats", CATS), ("Dogs", DOGS), ("Bread", BREAD)):
        add(db, Settings(), owner, kb_id, text_doc(text, title))
    return db, owner, kb_id


# -- full-text search, on both databases -------------------------------------------------------


def test_the_best_matching_chunk_comes_first(pets: tuple[str, str, str]) -> None:
    url, owner, kb_id = pets
    results, mode = search(url, Settings(), owner, kb_id, "cat purrs sun")
    assert mode == "fulltext"
    assert [r["documentTitle"] for r in results] == ["Cats", "Dogs"]  # bread matches no word
    assert results[0]["score"] == 1.0
    assert 0 < results[1]["score"] < 1
    first = results[0]
    assert set(first) == {
        "documentId",
        "documentTitle",
        "chunkId",
        "chunkIndex",
        "text",
        "score",
        "source",
        "metadata",  # the document's: the node passes it on with includeMetadata
    }
    assert first["text"] == CATS and first["chunkIndex"] == 0 and first["source"] is None


def test_stemming_matches_other_forms_of_a_word(pets: tuple[str, str, str]) -> None:
    url, owner, kb_id = pets
    results, _ = search(url, Settings(), owner, kb_id, "baking breads")
    assert [r["documentTitle"] for r in results] == ["Bread"]


def test_the_threshold_drops_weaker_matches(pets: tuple[str, str, str]) -> None:
    url, owner, kb_id = pets
    everything, _ = search(url, Settings(), owner, kb_id, "cat purrs sun")
    weaker = everything[1]["score"]
    kept, _ = search(url, Settings(), owner, kb_id, "cat purrs sun", threshold=weaker + 0.01)
    assert [r["documentTitle"] for r in kept] == ["Cats"]
    assert search(url, Settings(), owner, kb_id, "zeppelin")[0] == []


def test_top_k_limits_the_results(pets: tuple[str, str, str]) -> None:
    url, owner, kb_id = pets
    results, _ = search(url, Settings(), owner, kb_id, "cats dogs bread sleep", top_k=2)
    assert len(results) == 2
    assert len(search(url, Settings(), owner, kb_id, "cats dogs bread", top_k=5)[0]) == 3


def test_another_owners_knowledge_base_is_not_found(pets: tuple[str, str, str]) -> None:
    url, _, kb_id = pets
    stranger = make_user(url, "grace@example.com")
    with pytest.raises(KnowledgeBaseNotFound, match=kb_id):
        search(url, Settings(), stranger, kb_id, "cats")
    with pytest.raises(KnowledgeBaseNotFound):
        add(url, Settings(), stranger, kb_id, text_doc("intruder"))
    with pytest.raises(KnowledgeBaseNotFound):
        search(url, Settings(), stranger, "no-such-knowledge-base", "cats")
    # The stranger's own knowledge base does not see the owner's chunks either.
    theirs = make_kb(url, stranger)
    assert search(url, Settings(), stranger, theirs, "cats")[0] == []


def test_deleting_a_document_removes_it_from_search(pets: tuple[str, str, str]) -> None:
    url, owner, kb_id = pets
    with session_scope(get_engine(url)) as session:
        cats = next(
            d
            for d in knowledge.list_documents(session, owner_id=owner, kb_id=kb_id)
            if d.title == "Cats"
        )
        knowledge.delete_document(session, owner_id=owner, kb_id=kb_id, document_id=cats.id)
    results, _ = search(url, Settings(), owner, kb_id, "cat purrs")
    assert [r["documentTitle"] for r in results] == ["Dogs"]
    with session_scope(get_engine(url)) as session:
        knowledge.delete_knowledge_base(session, owner_id=owner, kb_id=kb_id)
    assert counts(url) == {"knowledge_bases": 0, "kb_documents": 0, "kb_chunks": 0, "vectors": 0}


def test_a_long_document_is_chunked_with_overlap_in_order(db: str) -> None:
    owner = make_user(db)
    kb_id = make_kb(db, owner)
    sentences = [f"Sentence number {i} talks about topic{i} in some detail." for i in range(120)]
    text = " ".join(sentences)
    document = add(db, Settings(), owner, kb_id, text_doc(text, "Long"))
    with session_scope(get_engine(db)) as session:
        chunks = session.scalars(
            select(KnowledgeChunk)
            .where(KnowledgeChunk.document_id == document.id)
            .order_by(KnowledgeChunk.ordinal)
        ).all()
    assert document.chunk_count == len(chunks) > 1
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert all(c.char_count == len(c.text) <= 800 for c in chunks)
    assert all(c.token_count == len(c.text.split()) for c in chunks)
    for before, after in itertools.pairwise(chunks):
        assert after.text[:20] in before.text  # the next chunk repeats the last one's end
    results, _ = search(db, Settings(), owner, kb_id, "topic97")
    assert len(results) == 1 and "topic97" in results[0]["text"]


def test_caps_refuse_a_document_and_write_nothing(db: str) -> None:
    owner = make_user(db)
    kb_id = make_kb(db, owner)
    before = counts(db)
    with pytest.raises(knowledge.DocumentTooLarge, match="MAX_DOCUMENT_CHARS"):
        add(db, loopback(max_document_chars=100), owner, kb_id, text_doc("x " * 100))
    with pytest.raises(knowledge.DocumentTooLarge, match="MAX_CHUNKS_PER_DOCUMENT"):
        add(db, loopback(max_chunks_per_document=2), owner, kb_id, text_doc("word. " * 500))
    assert counts(db) == before
    one_document = loopback(max_documents_per_knowledge_base=1)
    add(db, one_document, owner, kb_id, text_doc("the first"))
    with pytest.raises(knowledge.KnowledgeBaseFull):
        add(db, one_document, owner, kb_id, text_doc("the second"))
    assert counts(db)["kb_documents"] == 1


def test_postgres_search_uses_the_gin_index_and_sqlite_the_fts5_table(db: str) -> None:
    engine = get_engine(db)
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            index = connection.execute(
                sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_kb_chunks_tsv'")
            ).scalar_one()
            assert "gin" in index and "to_tsvector('english'::regconfig, text)" in index
        else:
            sql = connection.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE name = 'kb_chunks_fts'")
            ).scalar_one()
            assert "fts5" in sql and "porter" in sql


# -- PDFs and web pages -------------------------------------------------------------------------


def test_a_pdf_is_read_page_by_page(db: str) -> None:
    owner = make_user(db)
    kb_id = make_kb(db, owner)
    pdf = make_pdf(
        ["Quarterly report (draft)\nRevenue grew in the northern region.", "Page two: churn fell."],
        title="Q3 report",
    )
    source = DocumentSource(kind="pdf", data=pdf, filename="q3.pdf")
    document = add(db, Settings(), owner, kb_id, source)
    assert (document.title, document.source_kind, document.source) == ("Q3 report", "pdf", "q3.pdf")
    assert document.meta == {"pages": 2}
    results, _ = search(db, Settings(), owner, kb_id, "churn revenue")
    assert "Revenue grew in the northern region." in results[0]["text"]
    assert "churn fell" in results[0]["text"]


def test_a_pdf_over_its_caps_or_not_a_pdf_is_refused(db: str) -> None:
    owner = make_user(db)
    kb_id = make_kb(db, owner)
    pdf = make_pdf(["one", "two", "three"])
    with pytest.raises(knowledge.DocumentTooLarge, match="3 pages"):
        add(db, loopback(max_pdf_pages=2), owner, kb_id, DocumentSource(kind="pdf", data=pdf))
    with pytest.raises(knowledge.DocumentTooLarge, match="MAX_DOCUMENT_BYTES"):
        add(
            db, loopback(max_document_bytes=100), owner, kb_id, DocumentSource(kind="pdf", data=pdf)
        )
    with pytest.raises(knowledge.UnreadableDocument, match="not a PDF"):
        add(db, Settings(), owner, kb_id, DocumentSource(kind="pdf", data=b"GIF89a..."))
    broken = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 9 0 R >>\nendobj\ntrailer\n<<>>\n%%EOF"
    with pytest.raises(knowledge.UnreadableDocument) as refused:
        add(db, Settings(), owner, kb_id, DocumentSource(kind="pdf", data=broken))
    assert refused.value.problems[0]["field"] == "file"
    assert counts(db)["kb_documents"] == 0


def test_a_web_page_keeps_its_main_text_fetched_through_the_guard(db: str) -> None:
    owner = make_user(db)
    kb_id = make_kb(db, owner)
    pages = {
        "/cats": (200, "text/html; charset=utf-8", ARTICLE),
        "/notes.txt": (200, "text/plain", b"Plain notes about hamsters."),
        "/report.pdf": (200, "application/pdf", make_pdf(["Remote PDF about ferrets."])),
        "/gone": (404, "text/html", b"<html><body>missing</body></html>"),
        "/image": (200, "image/png", b"\x89PNG...."),
    }
    with PageServer(pages) as server:
        cats_url = server.url("/cats")
        page = add(
            db, loopback(), owner, kb_id, DocumentSource(kind="url", url=server.url("/cats"))
        )
        assert (page.title, page.source_kind, page.source) == (
            "All about cats",
            "url",
            server.url("/cats"),
        )
        assert page.meta["contentType"] == "text/html"
        notes = DocumentSource(kind="url", url=server.url("/notes.txt"), title="Notes")
        add(db, loopback(), owner, kb_id, notes)
        add(db, loopback(), owner, kb_id, DocumentSource(kind="url", url=server.url("/report.pdf")))
        for path, reason in (("/gone", "HTTP 404"), ("/image", "image/png")):
            with pytest.raises(knowledge.UnreadableDocument, match=reason) as refused:
                add(db, loopback(), owner, kb_id, DocumentSource(kind="url", url=server.url(path)))
            assert refused.value.problems[0]["field"] == "url"
        # Without the loopback allowance the SSRF guard refuses the local server.
        with pytest.raises(knowledge.UnreadableDocument, match="loopback") as blocked:
            add(db, Settings(), owner, kb_id, DocumentSource(kind="url", url=server.url("/cats")))
        assert blocked.value.problems[0]["field"] == "url"
        for bad in ("http://no-such-host.invalid/", "ftp://example.com/file", "not a url"):
            with pytest.raises(knowledge.UnreadableDocument) as refused:
                add(db, loopback(), owner, kb_id, DocumentSource(kind="url", url=bad))
            assert refused.value.problems[0]["field"] == "url"
        # A page over the size cap: refused while it streams.
        with pytest.raises(knowledge.DocumentTooLarge):
            add(
                db,
                loopback(max_document_bytes=1000),
                owner,
                kb_id,
                DocumentSource(kind="url", url=server.url("/bytes/5000")),
            )
    assert [r.path for r in server.requests].count("/cats") == 1  # the refused one never left
    results, _ = search(db, loopback(), owner, kb_id, "whiskers")
    assert [r["documentTitle"] for r in results] == ["All about cats"]
    assert results[0]["source"] == cats_url
    assert search(db, loopback(), owner, kb_id, "zeppelin")[0] == []  # nav and footer dropped
    assert search(db, loopback(), owner, kb_id, "hamsters")[0][0]["documentTitle"] == "Notes"
    assert search(db, loopback(), owner, kb_id, "ferrets")[0][0]["text"].strip() == (
        "Remote PDF about ferrets."
    )


# -- hybrid search -----------------------------------------------------------------------------

AXES = {
    "animal": ("cat", "feline", "purr", "kitten", "dog"),
    "vehicle": ("truck", "cargo", "lorry"),
    "food": ("bread", "flour", "yeast", "loaf"),
}


def concept_vector(text: str) -> list[float]:
    """A 3-dimension vector of the concepts a text mentions (what a real model would learn)."""
    lowered = text.lower()
    return [sum(lowered.count(word) for word in words) + 0.01 for words in AXES.values()]


def embeddings_reply(request: RecordedRequest) -> FakeReply:
    texts = request.body["input"]
    data = [
        {"object": "embedding", "index": i, "embedding": concept_vector(t)}
        for i, t in enumerate(texts)
    ]
    usage = {"prompt_tokens": 1, "total_tokens": 1}
    return FakeReply(body={"object": "list", "data": data, "model": "embed-1", "usage": usage})


def embedding_settings(llm: FakeLLMServer) -> Settings:
    base = llm.settings("embedder")
    return base.model_copy(
        update={
            "knowledge": KnowledgeSettings(
                embeddings_provider="embedder", embeddings_model="embed-1"
            )
        }
    )


def pgvector_available(url: str) -> bool:
    with get_engine(url).connect() as connection:
        return bool(
            connection.execute(
                sa.text("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
            ).scalar()
        )


def test_hybrid_search_finds_meaning_without_shared_words(db: str) -> None:
    owner = make_user(db)
    kb_id = make_kb(db, owner)
    postgres = db.startswith("postgresql")
    with FakeLLMServer(responder=embeddings_reply) as llm:
        settings = embedding_settings(llm)
        for title, text in (("Cats", CATS), ("Trucks", "Lorries haul cargo."), ("Bread", BREAD)):
            add(db, settings, owner, kb_id, text_doc(text, title))
        indexing = list(llm.requests)
        results, mode = search(db, settings, owner, kb_id, "feline")
        querying = llm.requests[len(indexing) :]
    if postgres and not pgvector_available(db):
        # Without the extension the documents are indexed for full text only (logged once).
        assert (indexing, querying, mode, results) == ([], [], "fulltext", [])
        return
    [query_request] = querying
    assert [r.path for r in indexing] == ["/v1/embeddings"] * 3
    assert [r.body["model"] for r in indexing] == ["embed-1"] * 3
    assert [r.body["input"] for r in indexing] == [[CATS], ["Lorries haul cargo."], [BREAD]]
    assert (query_request.path, query_request.body["model"]) == ("/v1/embeddings", "embed-1")
    assert query_request.body["input"] == ["feline"]
    assert mode == "hybrid"
    # "feline" is in no document: only the vectors can rank the cat document first.
    assert results[0]["documentTitle"] == "Cats" and results[0]["score"] == 1.0
    with session_scope(get_engine(db)) as session:
        kb = session.get(KnowledgeBase, kb_id)
        assert kb is not None and (kb.embedding_model, kb.embedding_dimensions) == (
            "embedder/embed-1",
            3,
        )
        stored = session.execute(sa.text("SELECT embedding FROM kb_chunk_vectors")).scalars()
        if not postgres:  # sqlite-vec's float32 blobs, which its distance function reads
            first = next(iter(stored))
            assert len(first) == 3 * 4
            assert struct.unpack("<3f", first) == pytest.approx(concept_vector(CATS))
            distance = session.execute(
                sa.text("SELECT vec_distance_cosine(:a, :b)"),
                {"a": struct.pack("<2f", 1, 0), "b": struct.pack("<2f", 0, 1)},
            ).scalar()
            assert distance == pytest.approx(1.0)


def test_fusion_puts_a_chunk_both_rankings_like_first(db: str) -> None:
    owner = make_user(db)
    kb_id = make_kb(db, owner)
    with FakeLLMServer(responder=embeddings_reply) as llm:
        settings = embedding_settings(llm)
        for title, text in (
            ("Bakery", "Our bakery sells bread. Yeast, flour, loaf after loaf of bread."),
            ("Menu", "The bakery menu lists cat-shaped cookies."),
            ("Cats", CATS),
        ):
            add(db, settings, owner, kb_id, text_doc(text, title))
        results, mode = search(db, settings, owner, kb_id, "bakery bread")
    if db.startswith("postgresql") and not pgvector_available(db):
        assert mode == "fulltext"
        return
    assert mode == "hybrid"
    titles = [r["documentTitle"] for r in results]
    # Bakery: first by words and by meaning; Menu: by words; Cats: only a far neighbour.
    assert titles == ["Bakery", "Menu", "Cats"]
    assert results[0]["score"] == 1.0 > results[1]["score"] > results[2]["score"]
    fused = knowledge.fuse([[1, 2], [1, 3]], 60)
    assert fused[0] == (1, pytest.approx(2 / 61)) and fused[1][0] == 2


def test_embeddings_failures(platform_db: str, caplog: pytest.LogCaptureFixture) -> None:
    owner = make_user(platform_db)
    kb_id = make_kb(platform_db, owner)
    with FakeLLMServer(responder=embeddings_reply) as llm:
        settings = embedding_settings(llm)
        llm.enqueue(FakeReply.error(500))
        before = counts(platform_db)
        with pytest.raises(knowledge.EmbeddingsFailed, match="embedder/embed-1"):
            add(platform_db, settings, owner, kb_id, text_doc(CATS, "Cats"))
        assert counts(platform_db) == before  # nothing half-written
        add(platform_db, settings, owner, kb_id, text_doc(CATS, "Cats"))
        llm.enqueue(FakeReply.error(503))
        with caplog.at_level(logging.WARNING, "flowmaestro.knowledge"):
            results, mode = search(platform_db, settings, owner, kb_id, "cat")
    assert mode == "fulltext" and results[0]["documentTitle"] == "Cats"
    assert "searching full text only" in caplog.text


def test_an_unconfigured_embeddings_provider_means_full_text(platform_db: str) -> None:
    owner = make_user(platform_db)
    kb_id = make_kb(platform_db, owner)
    settings = Settings().model_copy(
        update={"knowledge": KnowledgeSettings(embeddings_provider="nowhere")}
    )
    add(platform_db, settings, owner, kb_id, text_doc(CATS))
    assert search(platform_db, settings, owner, kb_id, "cat")[1] == "fulltext"
    assert counts(platform_db)["vectors"] == 0


# -- the node ----------------------------------------------------------------------------------


class FakeKnowledgeBases:
    """A `knowledge_bases` service recording its calls."""

    def __init__(self, results: list[dict[str, Any]] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.results = results or []

    def query(
        self, owner_id: str | None, kb_id: str, text: str, top_k: int, threshold: float
    ) -> list[dict[str, Any]]:
        self.calls.append((owner_id, kb_id, text, top_k, threshold))
        if kb_id != "kb-1" or owner_id != "user-1":
            raise KnowledgeBaseNotFound(f"knowledge base '{kb_id}' not found")
        return self.results[:top_k]


def run_query(
    raw: dict[str, Any],
    service: Any,
    *,
    user: str | None = "user-1",
    inputs: dict[str, Any] | None = None,
) -> NodeResult:
    config, problems = normalise_config("knowledgeBaseQuery", raw, node_id="kb")
    assert problems == []
    ctx = NodeContext(
        node_id="kb",
        node_type="knowledgeBaseQuery",
        label="Search",
        config=config,
        state=ExecutionState.start(inputs or {}),
        services={"knowledge_bases": service} if service is not None else {},
        run_tags={USER_TAG: user} if user else {},
    )
    return get_executor("knowledgeBaseQuery")(ctx)


HIT = {
    "documentId": "d",
    "documentTitle": "Cats",
    "chunkId": 1,
    "chunkIndex": 0,
    "text": CATS,
    "score": 1.0,
    "source": None,
}


def test_the_node_is_registered_for_both_spellings() -> None:
    assert get_executor("knowledgeBaseQuery") is execute_knowledge_base_query
    resolved = resolve_type("kbQuery")
    assert resolved is not None and resolved.type == "knowledgeBaseQuery"


def test_the_node_renders_its_fields_and_outputs_under_output_variable() -> None:
    service = FakeKnowledgeBases([HIT])
    raw = {
        "knowledgeBaseId": "{{kb}}",
        "queryText": "what do {{animal}}s do?",
        "topK": "{{k}}",
        "similarityThreshold": 0.25,
        "outputVariable": "context",
    }
    result = run_query(raw, service, inputs={"kb": "kb-1", "animal": "cat", "k": 3})
    assert service.calls == [("user-1", "kb-1", "what do cats do?", 3, 0.25)]
    assert result.output == {
        "context": {
            "query": "what do cats do?",
            "results": [HIT],
            "count": 1,
            "knowledgeBaseId": "kb-1",
        }
    }


def test_the_node_passes_document_metadata_on_only_when_asked() -> None:
    service = FakeKnowledgeBases([{**HIT, "metadata": {"team": "pets"}}])
    plain = run_query({"knowledgeBaseId": "kb-1", "queryText": "cats"}, service)
    assert plain.output["results"] == [HIT]
    raw = {"knowledgeBaseId": "kb-1", "queryText": "cats", "includeMetadata": True}
    assert run_query(raw, service).output["results"] == [{**HIT, "metadata": {"team": "pets"}}]


def test_the_node_defaults_and_caps_top_k_and_reads_the_older_query_key() -> None:
    service = FakeKnowledgeBases()
    run_query({"knowledgeBaseId": "kb-1", "query": "cats"}, service)
    run_query({"knowledgeBaseId": "kb-1", "query": "cats", "topK": 5000}, service)
    assert [(c[2], c[3], c[4]) for c in service.calls] == [("cats", 5, 0.0), ("cats", 100, 0.0)]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"queryText": "cats"}, "knowledgeBaseId"),
        ({"knowledgeBaseId": "kb-1", "queryText": "  "}, "queryText"),
        ({"knowledgeBaseId": "kb-1", "queryText": "cats", "topK": 0}, "topK"),
        ({"knowledgeBaseId": "kb-1", "queryText": "cats", "topK": "many"}, "topK"),
        (
            {"knowledgeBaseId": "kb-1", "queryText": "cats", "similarityThreshold": 2},
            "similarityThreshold",
        ),
        ({"knowledgeBaseId": "other-kb", "queryText": "cats"}, "knowledgeBaseId"),
    ],
)
def test_node_errors_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(NodeConfigurationError, match=field) as failed:
        run_query(raw, FakeKnowledgeBases())
    assert failed.value.details["field"] == field
    assert failed.value.node_id == "kb"


def test_another_users_run_does_not_find_the_knowledge_base() -> None:
    with pytest.raises(NodeConfigurationError, match="'kb-1' not found"):
        run_query(
            {"knowledgeBaseId": "kb-1", "queryText": "cats"}, FakeKnowledgeBases(), user="user-2"
        )


def test_a_run_without_the_service_fails_clearly() -> None:
    with pytest.raises(NodeConfigurationError, match="no knowledge_bases service"):
        run_query({"knowledgeBaseId": "kb-1", "queryText": "cats"}, None)


def test_the_node_searches_the_database_store(platform_db: str) -> None:
    owner = make_user(platform_db)
    kb_id = make_kb(platform_db, owner)
    add(platform_db, Settings(), owner, kb_id, text_doc(CATS, "Cats"))
    add(platform_db, Settings(), owner, kb_id, text_doc(BREAD, "Bread"))
    store = knowledge.DatabaseKnowledgeBaseStore(platform_db, Settings())
    raw = {"knowledgeBaseId": kb_id, "queryText": "fresh bread", "outputVariable": "found"}
    output = run_query(raw, store, user=owner).output["found"]
    assert output["count"] == 1 and output["results"][0]["documentTitle"] == "Bread"
    assert "metadata" not in output["results"][0]
    stranger = make_user(platform_db, "grace@example.com")
    with pytest.raises(NodeConfigurationError, match="not found"):
        run_query(raw, store, user=stranger)
    with pytest.raises(NodeConfigurationError, match="not found"):
        run_query(raw, store, user=None)


def node_spec(config: dict[str, Any]) -> NodeSpec:
    canonical, _ = normalise_config("knowledgeBaseQuery", config, node_id="kb")
    return NodeSpec(
        id="kb",
        type="knowledgeBaseQuery",
        source_type="kbQuery",
        label="Search",
        config=canonical,
        original_config=config,
    )


def test_config_problems_name_node_and_field() -> None:
    assert config_problems(node_spec({"knowledgeBaseId": "kb-1", "queryText": "{{q}}"})) == []
    assert (
        config_problems(node_spec({"knowledgeBaseId": "kb-1", "query": "x", "topK": "{{k}}"})) == []
    )
    problems = config_problems(node_spec({"topK": -1, "similarityThreshold": "high"}))
    assert [(p.node_id, p.field, p.code) for p in problems] == [
        ("kb", "knowledgeBaseId", "missing_config"),
        ("kb", "queryText", "missing_config"),
        ("kb", "topK", "invalid_config"),
        ("kb", "similarityThreshold", "invalid_config"),
    ]
    assert config_problems(node_spec({"knowledgeBaseId": "kb", "queryText": "x", "topK": 2.5}))
