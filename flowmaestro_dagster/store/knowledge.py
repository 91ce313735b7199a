"""Knowledge bases in the platform database: documents cut into chunks, searched by full text
and, when an embeddings endpoint is configured, by vectors too (docs/nodes.md).

Indexing (`add_document`): a document's text (pasted; a PDF's, read by pypdf; a web page's main
text, found by trafilatura in a page fetched through the SSRF guard) is cut into chunks of at
most `chunk_chars` characters repeating `chunk_overlap_chars` of the chunk before
(semantic-text-splitter: at paragraph, then sentence, then word boundaries), embedded when
`knowledge.embeddings_provider` is set, and written with its chunks and their vectors in one
transaction. Every input has a cap (`KnowledgeSettings`): bytes, characters, pages, chunks,
documents per knowledge base, and the time to fetch or read it.

Search (`search`), the same on both databases:

* full text: the query's words, ORed, ranked by BM25 (SQLite FTS5 `bm25()`) or cover density
  (PostgreSQL `ts_rank_cd` over a GIN-indexed `to_tsvector('english', text)`);
* hybrid, when the knowledge base's vectors come from the configured embeddings model: the
  query is embedded too, the chunks nearest by cosine distance (sqlite-vec's
  `vec_distance_cosine`, pgvector's `<=>`) are ranked beside the full-text ranking, and the two
  rankings are fused by reciprocal-rank fusion: a chunk scores the sum of 1 / (k + its rank)
  over the rankings it is in (`rrf_k`, 60 by default).

Scores are 0..1 relative to the query's best result (1.0 the best; 0.5 half its BM25 /
ts_rank_cd / fused score), so a `similarityThreshold` means the same on SQLite and PostgreSQL.

Vectors live outside the models, as the full-text indexes do: SQLite's `kb_chunk_vectors`
(float32 blobs, made by migration 0013) and PostgreSQL's pgvector table, made here when the
`vector` extension can be created (without it: full text only, logged once).
"""

import ctypes
import importlib.util
import io
import logging
import math
import re
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import httpcore
import httpx
from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy import text as sql
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from flowmaestro_dagster.errors import Conflict, NotFound, PlatformError, Unprocessable
from flowmaestro_dagster.nodes.knowledge import KnowledgeBaseNotFound
from flowmaestro_dagster.nodes.llm import make_client
from flowmaestro_dagster.nodes.net import BlockedAddressError, check_url, guarded_client
from flowmaestro_dagster.settings import KnowledgeSettings, LLMProvider, Settings
from flowmaestro_dagster.store.db import get_engine, session_scope
from flowmaestro_dagster.store.models import (
    KnowledgeBase,
    KnowledgeChunk,
    KnowledgeDocument,
    utcnow,
)

log = logging.getLogger("flowmaestro.knowledge")

SourceKind = Literal["text", "pdf", "url"]
SearchMode = Literal["fulltext", "hybrid"]
MAX_QUERY_TERMS = 32
MAX_TERM_CHARS = 64
MAX_TITLE_CHARS = 500
PDF_MAGIC = b"%PDF-"
_WORDS = re.compile(r"[^\W_]+")
_HTML_TYPES = ("text/html", "application/xhtml+xml")


# -- errors: PlatformErrors, so the API answers them as they are --------------------------------


class DocumentNotFound(NotFound):
    """Document not found."""


class DocumentTooLarge(PlatformError, status=413, code="document_too_large"):
    """The document is larger than this deployment accepts."""


class UnreadableDocument(Unprocessable, code="unreadable_document"):
    """No text could be read from the document."""


class KnowledgeBaseFull(Conflict, code="knowledge_base_full"):
    """The knowledge base holds as many documents as it may."""


class EmbeddingsFailed(PlatformError, status=502, code="embeddings_failed"):
    """The embeddings endpoint did not answer with vectors."""


def _unreadable(field_name: str, message: str) -> UnreadableDocument:
    return UnreadableDocument(
        f"{field_name}: {message}",
        problems=[{"code": "unreadable_document", "field": field_name, "message": message}],
    )


def _too_large(field_name: str, message: str) -> DocumentTooLarge:
    return DocumentTooLarge(
        f"{field_name}: {message}",
        problems=[{"code": "document_too_large", "field": field_name, "message": message}],
    )


# -- knowledge bases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnowledgeBaseSummary:
    """A knowledge base with the size of what it holds."""

    knowledge_base: KnowledgeBase
    document_count: int
    chunk_count: int


def create_knowledge_base(
    session: Session, *, owner_id: str, name: str, description: str = ""
) -> KnowledgeBase:
    knowledge_base = KnowledgeBase(owner_id=owner_id, name=name, description=description)
    session.add(knowledge_base)
    session.flush()
    return knowledge_base


def get_knowledge_base(session: Session, *, owner_id: str | None, kb_id: str) -> KnowledgeBase:
    """The owner's knowledge base; another owner's is not found, like a missing one."""
    knowledge_base = session.get(KnowledgeBase, kb_id) if owner_id and len(kb_id) <= 36 else None
    if knowledge_base is None or knowledge_base.owner_id != owner_id:
        raise KnowledgeBaseNotFound(f"knowledge base '{kb_id}' not found")
    return knowledge_base


def list_knowledge_bases(session: Session, *, owner_id: str) -> list[KnowledgeBaseSummary]:
    """The owner's knowledge bases, newest first, with their document and chunk counts."""
    counts = (
        select(
            KnowledgeDocument.knowledge_base_id.label("kb_id"),
            func.count().label("documents"),
            func.sum(KnowledgeDocument.chunk_count).label("chunks"),
        )
        .group_by(KnowledgeDocument.knowledge_base_id)
        .subquery()
    )
    rows = session.execute(
        select(KnowledgeBase, counts.c.documents, counts.c.chunks)
        .outerjoin(counts, counts.c.kb_id == KnowledgeBase.id)
        .where(KnowledgeBase.owner_id == owner_id)
        .order_by(KnowledgeBase.created_at.desc(), KnowledgeBase.id)
    ).all()
    return [KnowledgeBaseSummary(kb, int(docs or 0), int(chunks or 0)) for kb, docs, chunks in rows]


def summarize(session: Session, knowledge_base: KnowledgeBase) -> KnowledgeBaseSummary:
    documents, chunks = session.execute(
        select(func.count(), func.sum(KnowledgeDocument.chunk_count)).where(
            KnowledgeDocument.knowledge_base_id == knowledge_base.id
        )
    ).one()
    return KnowledgeBaseSummary(knowledge_base, int(documents or 0), int(chunks or 0))


def delete_knowledge_base(session: Session, *, owner_id: str, kb_id: str) -> None:
    """Forget the knowledge base, its documents, chunks and vectors (foreign keys cascade)."""
    knowledge_base = get_knowledge_base(session, owner_id=owner_id, kb_id=kb_id)
    session.execute(delete(KnowledgeBase).where(KnowledgeBase.id == knowledge_base.id))
    session.expunge(knowledge_base)


# -- documents ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentSource:
    """What a document is made of: `text`, a PDF's bytes (`data`), or a web page (`url`)."""

    kind: SourceKind
    title: str | None = None
    text: str | None = None
    data: bytes | None = None
    url: str | None = None
    filename: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedDocument:
    """A document read, chunked and (maybe) embedded: what one write transaction stores."""

    kind: SourceKind
    title: str
    source: str | None
    text_chars: int
    chunks: list[str]
    metadata: dict[str, Any]
    vectors: list[list[float]] | None = None
    embedding_model: str | None = None


def list_documents(session: Session, *, owner_id: str, kb_id: str) -> list[KnowledgeDocument]:
    knowledge_base = get_knowledge_base(session, owner_id=owner_id, kb_id=kb_id)
    return list(
        session.scalars(
            select(KnowledgeDocument)
            .where(KnowledgeDocument.knowledge_base_id == knowledge_base.id)
            .order_by(KnowledgeDocument.created_at, KnowledgeDocument.id)
        )
    )


def delete_document(session: Session, *, owner_id: str, kb_id: str, document_id: str) -> None:
    """Forget one document with its chunks and vectors (foreign keys cascade; SQLite's
    full-text index follows by trigger)."""
    knowledge_base = get_knowledge_base(session, owner_id=owner_id, kb_id=kb_id)
    deleted = session.execute(
        delete(KnowledgeDocument).where(
            KnowledgeDocument.id == document_id,
            KnowledgeDocument.knowledge_base_id == knowledge_base.id,
        )
    )
    if not getattr(deleted, "rowcount", 0):
        raise DocumentNotFound(f"document '{document_id}' not found")


def add_document(
    session: Session, *, settings: Settings, owner_id: str, kb_id: str, source: DocumentSource
) -> KnowledgeDocument:
    """Read, chunk, embed and store a document; the caller commits (all of it or nothing).

    The knowledge base is checked first (another user's is not found before any URL is
    fetched), then that read's transaction ends (`session.commit()`): no transaction waits on
    a download, a PDF or an embeddings endpoint. The write takes the knowledge base's row
    lock first, so the document cap holds under concurrent uploads.
    """
    knowledge_base = get_knowledge_base(session, owner_id=owner_id, kb_id=kb_id)
    _check_room(session, knowledge_base, settings.knowledge)
    embedder = indexing_embedder(session, settings=settings, knowledge_base=knowledge_base)
    session.commit()
    prepared = prepare_document(settings, source, embedder=embedder)
    return store_document(
        session, settings=settings, owner_id=owner_id, kb_id=kb_id, prepared=prepared
    )


def store_document(
    session: Session, *, settings: Settings, owner_id: str, kb_id: str, prepared: PreparedDocument
) -> KnowledgeDocument:
    """Write a prepared document, its chunks and vectors (the caller commits)."""
    touched = session.execute(
        update(KnowledgeBase)
        .where(KnowledgeBase.id == kb_id, KnowledgeBase.owner_id == owner_id)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if not getattr(touched, "rowcount", 0):
        raise KnowledgeBaseNotFound(f"knowledge base '{kb_id}' not found")
    knowledge_base = session.get(KnowledgeBase, kb_id, populate_existing=True)
    assert knowledge_base is not None
    _check_room(session, knowledge_base, settings.knowledge)
    document = KnowledgeDocument(
        knowledge_base_id=kb_id,
        title=prepared.title,
        source_kind=prepared.kind,
        source=prepared.source,
        meta=prepared.metadata,
        char_count=prepared.text_chars,
        chunk_count=len(prepared.chunks),
    )
    session.add(document)
    session.flush()
    chunks = [
        KnowledgeChunk(
            document_id=document.id,
            knowledge_base_id=kb_id,
            ordinal=ordinal,
            text=text,
            char_count=len(text),
            token_count=len(_WORDS.findall(text)),
        )
        for ordinal, text in enumerate(prepared.chunks)
    ]
    session.add_all(chunks)
    session.flush()
    vectors = prepared.vectors
    if vectors is not None and knowledge_base.embedding_model not in (
        None,
        prepared.embedding_model,
    ):
        vectors = None  # another model's vectors arrived first: this document is full text only
    if vectors:
        _insert_vectors(session, kb_id, [(c.id, v) for c, v in zip(chunks, vectors, strict=True)])
        knowledge_base.embedding_model = prepared.embedding_model
        knowledge_base.embedding_dimensions = len(vectors[0])
    session.flush()
    return document


def _check_room(session: Session, knowledge_base: KnowledgeBase, limits: KnowledgeSettings) -> None:
    documents = session.scalar(
        select(func.count()).where(KnowledgeDocument.knowledge_base_id == knowledge_base.id)
    )
    if (documents or 0) >= limits.max_documents_per_knowledge_base:
        raise KnowledgeBaseFull(
            f"knowledge base '{knowledge_base.id}' holds {documents} documents, as many as it "
            "may (FLOWMAESTRO_KNOWLEDGE__MAX_DOCUMENTS_PER_KNOWLEDGE_BASE)"
        )


def prepare_document(
    settings: Settings, source: DocumentSource, *, embedder: "Embedder | None" = None
) -> PreparedDocument:
    """A document's text, chunks and (with an embedder) vectors; touches no database."""
    limits = settings.knowledge
    deadline = time.monotonic() + limits.extract_timeout_s
    if source.kind == "text":
        field_name, text, title, label = "text", source.text or "", source.title, None
        metadata: dict[str, Any] = {}
        _check_chars(field_name, len(text), limits)
    elif source.kind == "pdf":
        field_name, label = "file", source.filename
        text, pdf_title, metadata = pdf_text(source.data or b"", limits, deadline=deadline)
        title = source.title or pdf_title or source.filename
    else:
        field_name = "url"
        text, page_title, metadata, label = fetch_url(settings, source.url or "", deadline)
        title = source.title or page_title or label
    text = clean_text(text)
    if not text.strip():
        raise _unreadable(field_name, "the document holds no text")
    chunks = chunk_text(text, limits)
    if len(chunks) > limits.max_chunks_per_document:
        raise _too_large(
            field_name,
            f"the document makes {len(chunks)} chunks; at most "
            f"{limits.max_chunks_per_document} are kept "
            "(FLOWMAESTRO_KNOWLEDGE__MAX_CHUNKS_PER_DOCUMENT)",
        )
    vectors = embedder.embed(chunks) if embedder is not None else None
    return PreparedDocument(
        kind=source.kind,
        title=clean_text(_title(title, text)),  # titles and file names may come from a form
        source=clean_text(label) if label is not None else None,
        text_chars=len(text),
        chunks=chunks,
        metadata={**metadata, **dict(source.metadata)},
        vectors=vectors,
        embedding_model=embedder.label if embedder is not None else None,
    )


def _title(title: str | None, text: str) -> str:
    chosen = (title or "").strip() or text.strip().splitlines()[0].strip()
    return chosen[:MAX_TITLE_CHARS]


def _check_chars(field_name: str, chars: int, limits: KnowledgeSettings) -> None:
    if chars > limits.max_document_chars:
        raise _too_large(
            field_name,
            f"the document has more than {limits.max_document_chars} characters of text "
            "(FLOWMAESTRO_KNOWLEDGE__MAX_DOCUMENT_CHARS)",
        )


def clean_text(text: str) -> str:
    """Text every database stores: no NUL characters, no lone surrogates."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


@lru_cache(maxsize=8)
def _splitter(chars: int, overlap: int) -> Any:
    from semantic_text_splitter import TextSplitter

    return TextSplitter(chars, overlap=overlap)


def chunk_text(text: str, limits: KnowledgeSettings) -> list[str]:
    """Chunks of at most `chunk_chars` characters, cut at the largest boundary that fits
    (paragraph, sentence, word), each repeating up to `chunk_overlap_chars` of the last."""
    splitter = _splitter(limits.chunk_chars, limits.chunk_overlap_chars)
    return [chunk for chunk in splitter.chunks(text) if chunk.strip()]


# -- reading PDFs and web pages -----------------------------------------------------------------


def is_pdf(data: bytes) -> bool:
    """A PDF by its content: the `%PDF-` header (readers accept it within the first 1 KiB)."""
    return PDF_MAGIC in data[:1024]


def pdf_text(
    data: bytes, limits: KnowledgeSettings, *, deadline: float, field_name: str = "file"
) -> tuple[str, str | None, dict[str, Any]]:
    """(text, title, metadata) of a PDF, page by page within the caps."""
    if len(data) > limits.max_document_bytes:
        raise _too_large(
            field_name,
            f"the PDF has more than {limits.max_document_bytes} bytes "
            "(FLOWMAESTRO_KNOWLEDGE__MAX_DOCUMENT_BYTES)",
        )
    if not is_pdf(data):
        raise _unreadable(field_name, "not a PDF (no %PDF- header)")
    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise _unreadable(field_name, "the PDF is encrypted with a password")
        pages = len(reader.pages)
        if pages > limits.max_pdf_pages:
            raise _too_large(
                field_name,
                f"the PDF has {pages} pages; at most {limits.max_pdf_pages} are read "
                "(FLOWMAESTRO_KNOWLEDGE__MAX_PDF_PAGES)",
            )
        parts: list[str] = []
        chars = 0
        for page in reader.pages:
            if time.monotonic() > deadline:
                raise _unreadable(
                    field_name,
                    f"reading the PDF took longer than {limits.extract_timeout_s:g} s "
                    "(FLOWMAESTRO_KNOWLEDGE__EXTRACT_TIMEOUT_S)",
                )
            text = page.extract_text() or ""
            chars += len(text)
            _check_chars(field_name, chars, limits)
            parts.append(text)
        info = reader.metadata
        title = str(info.title).strip() if info is not None and info.title else None
    except PlatformError:
        raise
    except Exception as exc:  # a malformed PDF makes pypdf raise exceptions of many kinds
        raise _unreadable(field_name, f"not a readable PDF ({type(exc).__name__}: {exc})") from exc
    return "\n\n".join(parts), title, {"pages": pages}


def fetch_url(
    settings: Settings, url: str, deadline: float
) -> tuple[str, str | None, dict[str, Any], str]:
    """(text, title, metadata, final URL) of a web page (its main text), a text file or a PDF,
    fetched through the SSRF guard with the HTTP settings' size cap and a time limit."""
    limits = settings.knowledge
    cap = min(settings.http.max_response_bytes, limits.max_document_bytes)
    timeout = min(settings.http.timeout_s, limits.extract_timeout_s)
    try:
        check_url(url, settings.http)
        headers = {"Accept": "text/html, text/plain;q=0.9, application/pdf;q=0.8, */*;q=0.1"}
        with (
            guarded_client(
                settings.http, timeout=timeout, follow_redirects=True, headers=headers
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 400:
                raise _unreadable("url", f"{url} answered HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise _too_large("url", f"{url} sends {declared} bytes; at most {cap} are read")
            body = bytearray()
            for part in response.iter_bytes():
                body += part
                if len(body) > cap:
                    raise _too_large("url", f"{url} sends more than {cap} bytes")
                if time.monotonic() > deadline:
                    raise _unreadable("url", f"{url} took longer than {timeout:g} s")
            content_type = response.headers.get("content-type", "")
            charset = response.charset_encoding
            final_url = str(response.url)
    except PlatformError:
        raise
    except BlockedAddressError as exc:
        raise _unreadable("url", str(exc)) from exc
    except httpx.TimeoutException as exc:
        raise _unreadable("url", f"{url} did not answer within {timeout:g} s") from exc
    except (httpx.HTTPError, httpx.InvalidURL, httpcore.ConnectError, ValueError) as exc:
        raise _unreadable("url", f"cannot fetch {url}: {exc}") from exc
    mime = content_type.split(";", 1)[0].strip().lower()
    metadata: dict[str, Any] = {"url": final_url, "contentType": mime or None}
    data = bytes(body)
    if mime == "application/pdf" or (not mime.startswith("text/") and is_pdf(data)):
        text, title, pdf_metadata = pdf_text(data, limits, deadline=deadline, field_name="url")
        return text, title, {**metadata, **pdf_metadata}, final_url
    if mime in _HTML_TYPES or (not mime and b"<html" in data[:1024].lower()):
        text, title = _main_text(data, charset, final_url)
        _check_chars("url", len(text), limits)
        return text, title, metadata, final_url
    if mime.startswith("text/") or mime in ("application/json", "application/xml"):
        text = data.decode(charset or "utf-8", errors="replace")
        _check_chars("url", len(text), limits)
        return text, None, metadata, final_url
    raise _unreadable("url", f"{url} sent {mime or 'no content type'}: not a page, text or PDF")


def _main_text(data: bytes, charset: str | None, url: str) -> tuple[str, str | None]:
    """A page's main text and title (trafilatura: no navigation, footers or comments)."""
    import trafilatura

    page: str | bytes = data.decode(charset, errors="replace") if charset else data
    document = trafilatura.bare_extraction(
        page, url=url, with_metadata=True, include_comments=False, include_tables=True
    )
    text = getattr(document, "text", None) if document is not None else None
    if not text:
        raise _unreadable("url", f"found no main text in {url}")
    title = getattr(document, "title", None)
    return str(text), str(title) if title else None


# -- embeddings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Embedder:
    """The configured OpenAI-compatible embeddings endpoint (`knowledge.embeddings_provider`).

    `label` (provider/model) is what a knowledge base records of the vectors it holds."""

    provider_name: str
    provider: LLMProvider
    model: str
    batch_size: int

    @property
    def label(self) -> str:
        return f"{self.provider_name}/{self.model}"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order, `batch_size` texts a request."""
        import openai

        vectors: list[list[float]] = []
        try:
            with make_client(self.provider) as client:
                for start in range(0, len(texts), self.batch_size):
                    batch = list(texts[start : start + self.batch_size])
                    response = client.embeddings.create(model=self.model, input=batch)
                    items = sorted(response.data, key=lambda item: item.index)
                    if len(items) != len(batch):
                        raise EmbeddingsFailed(
                            f"{self.label} answered {len(items)} vectors for {len(batch)} texts"
                        )
                    vectors.extend([float(x) for x in item.embedding] for item in items)
        except openai.OpenAIError as exc:
            raise EmbeddingsFailed(f"the embeddings endpoint {self.label} failed: {exc}") from exc
        sizes = {len(vector) for vector in vectors}
        if len(sizes) > 1 or 0 in sizes:
            raise EmbeddingsFailed(f"{self.label} answered vectors of sizes {sorted(sizes)}")
        if not all(math.isfinite(x) for vector in vectors for x in vector):
            raise EmbeddingsFailed(f"{self.label} answered a vector that is not finite")
        return vectors


def embedder_of(settings: Settings) -> Embedder | None:
    """The embeddings endpoint the settings name, else None (full-text search only)."""
    knowledge = settings.knowledge
    name = (knowledge.embeddings_provider or "").strip()
    if not name:
        return None
    provider = settings.llm.provider(name)
    model = provider.model_for(knowledge.embeddings_model) if provider is not None else None
    if provider is None or not model:
        _warn_once(
            f"embeddings:{name}",
            "FLOWMAESTRO_KNOWLEDGE__EMBEDDINGS_PROVIDER=%s names no configured provider with a "
            "model (FLOWMAESTRO_LLM__PROVIDERS__%s__BASE_URL, "
            "FLOWMAESTRO_KNOWLEDGE__EMBEDDINGS_MODEL): knowledge bases search full text only",
            name,
            name.upper(),
        )
        return None
    return Embedder(name, provider, model, knowledge.embeddings_batch_size)


def indexing_embedder(
    session: Session, *, settings: Settings, knowledge_base: KnowledgeBase
) -> Embedder | None:
    """The embedder for a new document of this knowledge base: None when none is configured,
    when the knowledge base holds another model's vectors, or when the database cannot hold
    vectors (PostgreSQL without pgvector)."""
    embedder = embedder_of(settings)
    if embedder is None:
        return None
    if knowledge_base.embedding_model not in (None, embedder.label):
        log.warning(
            "knowledge base %s holds vectors of %s, not %s: new documents are searched by full "
            "text only (a new knowledge base takes the new model)",
            knowledge_base.id,
            knowledge_base.embedding_model,
            embedder.label,
        )
        return None
    if _dialect(session) == "postgresql" and not _pgvector_ready(session):
        return None
    return embedder


# -- search ---------------------------------------------------------------------------------------


def query_terms(text: str) -> list[str]:
    """The words of a query as both full-text indexes read them (letters and digits), each
    once, at most MAX_QUERY_TERMS: safe to quote into an FTS5 or tsquery expression."""
    terms: list[str] = []
    for word in _WORDS.findall(text.lower()):
        term = word[:MAX_TERM_CHARS]
        if term not in terms:
            terms.append(term)
        if len(terms) == MAX_QUERY_TERMS:
            break
    return terms


def fuse(rankings: Sequence[Sequence[int]], k: int) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: (chunk id, sum of 1 / (k + rank)) best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, chunk_id in enumerate(ranking, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def relative(scored: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """Scores as fractions of the best one (best first in, best first out)."""
    if not scored:
        return []
    best = max(score for _, score in scored)
    if best <= 0:
        return [(chunk_id, 1.0) for chunk_id, _ in scored]
    return [(chunk_id, max(score, 0.0) / best) for chunk_id, score in scored]


def search(
    session: Session,
    *,
    settings: Settings,
    owner_id: str | None,
    kb_id: str,
    text: str,
    top_k: int,
    threshold: float = 0.0,
) -> tuple[list[dict[str, Any]], SearchMode]:
    """The owner's knowledge base's best chunks for `text`: at most `top_k` results scoring
    `threshold` or more, best first; and whether vectors took part."""
    embedder = embedder_of(settings)
    vectors_ready = embedder is not None and _vectors_ready(session)  # first: may swap SQLite's
    knowledge_base = get_knowledge_base(session, owner_id=owner_id, kb_id=kb_id)
    hybrid = (
        embedder is not None
        and vectors_ready
        and knowledge_base.embedding_model == embedder.label
        and knowledge_base.embedding_dimensions is not None
    )
    pool = max(top_k * 4, 50) if hybrid else top_k
    lexical = _fulltext(session, knowledge_base.id, query_terms(text), pool)
    mode: SearchMode = "fulltext"
    scored = relative(lexical)
    if hybrid and embedder is not None:
        query_vector = _query_vector(embedder, text, knowledge_base)
        if query_vector is not None:
            nearest = _nearest(session, knowledge_base.id, query_vector, pool)
            fused = fuse(
                [[cid for cid, _ in lexical], [cid for cid, _ in nearest]],
                settings.knowledge.rrf_k,
            )
            scored = relative(fused)
            mode = "hybrid"
    kept = [(chunk_id, score) for chunk_id, score in scored if score >= threshold][:top_k]
    return _results(session, kept), mode


def _query_vector(
    embedder: Embedder, text: str, knowledge_base: KnowledgeBase
) -> list[float] | None:
    try:
        vector = embedder.embed([text])[0]
    except EmbeddingsFailed as exc:
        log.warning("knowledge base %s: %s; searching full text only", knowledge_base.id, exc)
        return None
    if len(vector) != knowledge_base.embedding_dimensions:
        log.warning(
            "knowledge base %s holds %s-dimension vectors, the query's has %d: full text only",
            knowledge_base.id,
            knowledge_base.embedding_dimensions,
            len(vector),
        )
        return None
    return vector


def _results(session: Session, kept: Sequence[tuple[int, float]]) -> list[dict[str, Any]]:
    if not kept:
        return []
    rows = session.execute(
        select(
            KnowledgeChunk.id,
            KnowledgeChunk.ordinal,
            KnowledgeChunk.text,
            KnowledgeDocument.id,
            KnowledgeDocument.title,
            KnowledgeDocument.source,
            KnowledgeDocument.meta,
        )
        .join(KnowledgeDocument, KnowledgeDocument.id == KnowledgeChunk.document_id)
        .where(KnowledgeChunk.id.in_([chunk_id for chunk_id, _ in kept]))
    ).all()
    by_id = {row[0]: row for row in rows}
    results = []
    for chunk_id, score in kept:
        row = by_id.get(chunk_id)
        if row is None:
            continue  # deleted since it was ranked
        _, ordinal, text, document_id, title, source, metadata = row
        results.append(
            {
                "documentId": document_id,
                "documentTitle": title,
                "chunkId": chunk_id,
                "chunkIndex": ordinal,
                "text": text,
                "score": round(score, 6),
                "source": source,
                "metadata": dict(metadata or {}),  # the document's (a node shows it on request)
            }
        )
    return results


# -- full text ------------------------------------------------------------------------------------

_SQLITE_FULLTEXT = sql(
    "SELECT c.id, -bm25(kb_chunks_fts) AS relevance FROM kb_chunks_fts "
    "JOIN kb_chunks c ON c.id = kb_chunks_fts.rowid "
    "WHERE kb_chunks_fts MATCH :query AND c.knowledge_base_id = :kb "
    "ORDER BY bm25(kb_chunks_fts), c.id LIMIT :limit"
)
_POSTGRES_FULLTEXT = sql(
    "SELECT c.id, ts_rank_cd(to_tsvector('english', c.text), q) AS relevance "
    "FROM kb_chunks c, to_tsquery('english', :query) q "
    "WHERE c.knowledge_base_id = :kb AND to_tsvector('english', c.text) @@ q "
    "ORDER BY relevance DESC, c.id LIMIT :limit"
)


def _fulltext(
    session: Session, kb_id: str, terms: list[str], limit: int
) -> list[tuple[int, float]]:
    """(chunk id, raw relevance: higher is better) of chunks holding any of the terms."""
    if not terms:
        return []
    dialect = _dialect(session)
    if dialect == "sqlite":
        statement, query = _SQLITE_FULLTEXT, " OR ".join(f'"{term}"' for term in terms)
    elif dialect == "postgresql":
        statement, query = _POSTGRES_FULLTEXT, " | ".join(terms)
    else:
        raise NotImplementedError(f"knowledge bases do not search {dialect} databases")
    rows = session.execute(statement, {"query": query, "kb": kb_id, "limit": limit}).all()
    return [(int(chunk_id), float(relevance)) for chunk_id, relevance in rows]


# -- vectors --------------------------------------------------------------------------------------

_SQLITE_NEAREST = sql(
    "SELECT chunk_id, 1 - vec_distance_cosine(embedding, :vector) FROM kb_chunk_vectors "
    "WHERE knowledge_base_id = :kb ORDER BY vec_distance_cosine(embedding, :vector), chunk_id "
    "LIMIT :limit"
)
_POSTGRES_NEAREST = sql(
    "SELECT chunk_id, 1 - (embedding <=> CAST(:vector AS vector)) FROM kb_chunk_vectors "
    "WHERE knowledge_base_id = :kb ORDER BY embedding <=> CAST(:vector AS vector), chunk_id "
    "LIMIT :limit"
)
_SQLITE_INSERT = sql(
    "INSERT INTO kb_chunk_vectors (chunk_id, knowledge_base_id, embedding) "
    "VALUES (:chunk, :kb, :vector)"
)
_POSTGRES_INSERT = sql(
    "INSERT INTO kb_chunk_vectors (chunk_id, knowledge_base_id, embedding) "
    "VALUES (:chunk, :kb, CAST(:vector AS vector))"
)
# Without fixed dimensions (each knowledge base's model has its own) pgvector has no ANN index:
# the search is exact, over one knowledge base's rows (the index on knowledge_base_id).
POSTGRES_VECTOR_TABLE = (
    "CREATE TABLE IF NOT EXISTS kb_chunk_vectors ("
    "chunk_id INTEGER PRIMARY KEY REFERENCES kb_chunks (id) ON DELETE CASCADE, "
    "knowledge_base_id VARCHAR(36) NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE, "
    "embedding vector NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ix_kb_chunk_vectors_kb ON kb_chunk_vectors (knowledge_base_id)",
)


def _vector_value(session: Session, vector: Sequence[float]) -> bytes | str:
    """sqlite-vec's float32 blob, or pgvector's text form."""
    if _dialect(session) == "sqlite":
        return struct.pack(f"<{len(vector)}f", *vector)
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def _insert_vectors(session: Session, kb_id: str, rows: list[tuple[int, list[float]]]) -> None:
    statement = _SQLITE_INSERT if _dialect(session) == "sqlite" else _POSTGRES_INSERT
    session.execute(
        statement,
        [
            {"chunk": chunk_id, "kb": kb_id, "vector": _vector_value(session, vector)}
            for chunk_id, vector in rows
        ],
    )


def _nearest(
    session: Session, kb_id: str, vector: Sequence[float], limit: int
) -> list[tuple[int, float]]:
    """(chunk id, cosine similarity) of the knowledge base's chunks nearest to `vector`."""
    statement = _SQLITE_NEAREST if _dialect(session) == "sqlite" else _POSTGRES_NEAREST
    parameters = {"vector": _vector_value(session, vector), "kb": kb_id, "limit": limit}
    rows = session.execute(statement, parameters).all()
    return [(int(chunk_id), float(similarity)) for chunk_id, similarity in rows]


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _vectors_ready(session: Session) -> bool:
    """Whether this database can search vectors now (call before the session does anything)."""
    dialect = _dialect(session)
    if dialect == "sqlite":
        return _sqlite_vec_ready(session)
    if dialect == "postgresql":
        return _pgvector_ready(session)
    return False


_lock = threading.Lock()
_warned: set[str] = set()
_pgvector: dict[str, bool] = {}  # database URL (no password) -> the vector table is there
_VEC_INFO = "flowmaestro.sqlite_vec"  # a DBAPI connection's info: sqlite-vec is loaded
_vec_auto: list[Any] = []  # [registered: bool, the extension's library kept loaded]
_renewed_pools: set[int] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message, *args)


def _pgvector_ready(session: Session) -> bool:
    """Whether pgvector's table is there, made (with the extension) the first time: without
    the extension, full-text search only, logged once per database."""
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    key = engine.url.render_as_string(hide_password=True)
    with _lock:
        known = _pgvector.get(key)
    if known is None:
        known = _make_pgvector_table(engine)
        with _lock:
            _pgvector[key] = known
    return known


def _make_pgvector_table(engine: Engine) -> bool:
    for _ in range(3):
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
                for statement in POSTGRES_VECTOR_TABLE:
                    connection.exec_driver_sql(statement)
            return True
        except IntegrityError:
            continue  # another process made it at the same moment: it is there on the next try
        except DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            _warn_once(
                f"pgvector:{engine.url.render_as_string(hide_password=True)}",
                "pgvector is not available (%s): knowledge bases search full text only "
                "(install the server's pgvector package, e.g. Debian's postgresql-15-pgvector)",
                reason,
            )
            return False
    return False


def _sqlite_vec_ready(session: Session) -> bool:
    """Whether sqlite-vec's functions work on the session's connection, loaded if need be.

    Python's `enable_load_extension` loads it into the connection. Python builds without it
    (pyenv's default) get SQLite's own `sqlite3_auto_extension`, which loads it into every
    connection opened from then on: the engine's pool is renewed once and this connection
    replaced, so call this before the session reads or writes anything.
    """
    connection = session.connection()
    if connection.info.get(_VEC_INFO):
        return True
    if not _vec_works(connection):
        driver = connection.connection.driver_connection
        if hasattr(driver, "enable_load_extension"):
            _load_vec(driver)
        elif _register_vec_auto_extension():
            engine = session.get_bind()
            assert isinstance(engine, Engine)
            with _lock:
                renew = id(engine) not in _renewed_pools
                _renewed_pools.add(id(engine))
            if renew:
                engine.dispose()  # closes idle connections; busy ones are closed when returned
            connection.invalidate()
            session.rollback()
            connection = session.connection()
        if not _vec_works(connection):
            _warn_once(
                "sqlite-vec", "sqlite-vec cannot be loaded: knowledge bases search full text"
            )
            return False
    connection.info[_VEC_INFO] = True
    return True


def _vec_works(connection: Connection) -> bool:
    try:
        connection.exec_driver_sql("SELECT vec_version()")
    except OperationalError:
        return False
    return True


def _load_vec(driver: Any) -> None:
    import sqlite_vec

    driver.enable_load_extension(True)
    try:
        sqlite_vec.load(driver)
    except Exception as exc:  # noqa: BLE001 - sqlite3.OperationalError, or no such library
        log.warning("sqlite-vec could not be loaded: %s", exc)
    finally:
        driver.enable_load_extension(False)


def _register_vec_auto_extension() -> bool:
    """sqlite-vec's entry point registered with `sqlite3_auto_extension` of the SQLite library
    Python's `_sqlite3` module uses (found through that module: the same library, whether it is
    shared or linked in). Once per process."""
    with _lock:
        if _vec_auto:
            return bool(_vec_auto[0])
        registered, library = False, None
        try:
            import sqlite_vec

            module = importlib.util.find_spec("_sqlite3")
            base = sqlite_vec.loadable_path()
            candidates = [Path(base + suffix) for suffix in (".so", ".dylib", ".dll")]
            path = next((p for p in candidates if p.exists()), None)
            if module is not None and module.origin and path is not None:
                sqlite = ctypes.CDLL(module.origin)
                library = ctypes.CDLL(str(path))
                sqlite.sqlite3_auto_extension.argtypes = [ctypes.c_void_p]
                entry = ctypes.cast(library.sqlite3_vec_init, ctypes.c_void_p)
                registered = sqlite.sqlite3_auto_extension(entry) == 0
        except (ImportError, OSError, AttributeError) as exc:
            log.warning("sqlite-vec could not be registered: %s", exc)
        _vec_auto[:] = [registered, library]
        return registered


# -- the node service ------------------------------------------------------------------------------


class DatabaseKnowledgeBaseStore:
    """The `knowledge_bases` service of knowledgeBaseQuery nodes: a search in the platform
    database, in a transaction of its own."""

    def __init__(self, database_url: str, settings: Settings) -> None:
        self.database_url = database_url
        self.settings = settings

    def query(
        self, owner_id: str | None, kb_id: str, text: str, top_k: int, threshold: float
    ) -> list[dict[str, Any]]:
        if not owner_id:
            raise KnowledgeBaseNotFound(f"knowledge base '{kb_id}' not found (the run has no user)")
        with session_scope(get_engine(self.database_url)) as session:
            results, _ = search(
                session,
                settings=self.settings,
                owner_id=owner_id,
                kb_id=kb_id,
                text=text,
                top_k=top_k,
                threshold=threshold,
            )
        return results


__all__ = [
    "DatabaseKnowledgeBaseStore",
    "DocumentNotFound",
    "DocumentSource",
    "DocumentTooLarge",
    "Embedder",
    "EmbeddingsFailed",
    "KnowledgeBaseFull",
    "KnowledgeBaseNotFound",
    "KnowledgeBaseSummary",
    "PreparedDocument",
    "UnreadableDocument",
    "add_document",
    "chunk_text",
    "create_knowledge_base",
    "delete_document",
    "delete_knowledge_base",
    "embedder_of",
    "fuse",
    "get_knowledge_base",
    "list_documents",
    "list_knowledge_bases",
    "prepare_document",
    "query_terms",
    "search",
    "store_document",
    "summarize",
]
