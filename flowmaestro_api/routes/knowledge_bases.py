"""Knowledge bases (CRUD), their documents, and search: docs/nodes.md#knowledgebasequery.

A document is sent as JSON, `{title, text}` or `{title, url}` (the page is fetched through the
SSRF guard and its main text kept), or as `multipart/form-data` with a PDF in `file` (a PDF by
its `%PDF-` header, not its name). It is read, chunked and indexed in the request, and stored
in one transaction with its chunks: a failure leaves nothing behind. Another user's knowledge
base is a 404, a document over a cap a 413, a field that cannot work a 422 naming it.
"""

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from starlette.datastructures import UploadFile

from flowmaestro_api.deps import CurrentUser, SessionDep, SessionRoute, SettingsDep
from flowmaestro_api.errors import malformed_json
from flowmaestro_api.request_guard import is_json
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.errors import Unprocessable, UnsupportedMediaType
from flowmaestro_dagster.nodes.knowledge import MAX_QUERY_CHARS, MAX_TOP_K
from flowmaestro_dagster.store import knowledge as service
from flowmaestro_dagster.store.knowledge import DocumentSource, KnowledgeBaseSummary
from flowmaestro_dagster.store.models import KnowledgeDocument

router = APIRouter(route_class=SessionRoute, prefix="/knowledge-bases", tags=["knowledge bases"])


class KnowledgeBaseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=10_000)


class KnowledgeBasePublic(BaseModel):
    id: str
    name: str
    description: str
    document_count: int
    chunk_count: int
    embedding_model: str | None
    embedding_dimensions: int | None
    created_at: datetime
    updated_at: datetime


class KnowledgeBaseList(BaseModel):
    items: list[KnowledgeBasePublic]


class DocumentCreate(BaseModel):
    """A document from text, or from the page at `url`: one of the two."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=500)
    text: str | None = Field(default=None, min_length=1)
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentPublic(BaseModel):
    id: str
    knowledge_base_id: str
    title: str
    source_kind: str
    source: str | None
    metadata: dict[str, Any]
    char_count: int
    chunk_count: int
    created_at: datetime


class DocumentList(BaseModel):
    items: list[DocumentPublic]


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class QueryRequest(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K)
    similarity_threshold: float = Field(default=0.0, ge=0, le=1)
    include_metadata: bool = False


class SearchHit(_Camel):
    document_id: str
    document_title: str
    chunk_id: int
    chunk_index: int
    text: str
    score: float
    source: str | None
    metadata: dict[str, Any] | None = None  # the document's, with includeMetadata


class QueryResponse(_Camel):
    """What a knowledgeBaseQuery node outputs, and whether vectors took part (`mode`)."""

    query: str
    results: list[SearchHit]
    count: int
    knowledge_base_id: str
    mode: str


_DOCUMENT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": DocumentCreate.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "a PDF"},
                        "title": {"type": "string", "maxLength": 500},
                    },
                }
            },
        },
    }
}


def _problem(field: str, message: str) -> Unprocessable:
    return Unprocessable(
        f"{field}: {message}",
        problems=[{"code": "invalid_field", "field": field, "message": message}],
    )


async def document_source(request: Request, settings: SettingsDep) -> DocumentSource:
    """The document a request sends: JSON text or URL, or a multipart PDF upload."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() == "multipart/form-data":
        return await _uploaded_pdf(request, settings)
    if not is_json(content_type):
        raise UnsupportedMediaType(
            "send a document as JSON ({title, text} or {title, url}) or as multipart/form-data "
            "with a PDF in `file`"
        )
    body = await request.body()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise malformed_json(body, exc.pos, exc.msg) from exc
    try:
        document = DocumentCreate.model_validate(data)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors, body=data) from exc
    if (document.text is None) == (document.url is None):
        raise _problem("text", "send either text or url (one of the two)")
    if document.url is not None:
        return DocumentSource(
            kind="url", title=document.title, url=document.url, metadata=document.metadata
        )
    return DocumentSource(
        kind="text", title=document.title, text=document.text, metadata=document.metadata
    )


async def _uploaded_pdf(request: Request, settings: ApiSettings) -> DocumentSource:
    cap = settings.knowledge.max_document_bytes
    async with request.form(max_files=1, max_fields=4, max_part_size=64 * 1024) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise _problem("file", "a multipart upload carries the PDF in the field `file`")
        data = await upload.read(cap + 1)
        title = form.get("title")
        filename = upload.filename
    if len(data) > cap:
        raise service.DocumentTooLarge(
            f"file: the PDF has more than {cap} bytes (FLOWMAESTRO_KNOWLEDGE__MAX_DOCUMENT_BYTES)",
            problems=[{"code": "document_too_large", "field": "file", "message": "too large"}],
        )
    if not service.is_pdf(data):
        raise _problem("file", "not a PDF (no %PDF- header)")
    return DocumentSource(
        kind="pdf",
        title=(title.strip() or None) if isinstance(title, str) else None,
        data=data,
        filename=filename,
    )


DocumentSourceDep = Annotated[DocumentSource, Depends(document_source)]


def _public(summary: KnowledgeBaseSummary) -> KnowledgeBasePublic:
    kb = summary.knowledge_base
    return KnowledgeBasePublic(
        id=kb.id,
        name=kb.name,
        description=kb.description,
        document_count=summary.document_count,
        chunk_count=summary.chunk_count,
        embedding_model=kb.embedding_model,
        embedding_dimensions=kb.embedding_dimensions,
        created_at=kb.created_at,
        updated_at=kb.updated_at,
    )


def _document(document: KnowledgeDocument) -> DocumentPublic:
    return DocumentPublic(
        id=document.id,
        knowledge_base_id=document.knowledge_base_id,
        title=document.title,
        source_kind=document.source_kind,
        source=document.source,
        metadata=dict(document.meta or {}),
        char_count=document.char_count,
        chunk_count=document.chunk_count,
        created_at=document.created_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KnowledgeBasePublic)
def create_knowledge_base(
    body: KnowledgeBaseCreate, session: SessionDep, user: CurrentUser
) -> KnowledgeBasePublic:
    """An empty knowledge base of yours."""
    kb = service.create_knowledge_base(
        session, owner_id=user.id, name=body.name, description=body.description
    )
    return _public(KnowledgeBaseSummary(kb, 0, 0))


@router.get("", response_model=KnowledgeBaseList)
def list_knowledge_bases(session: SessionDep, user: CurrentUser) -> KnowledgeBaseList:
    summaries = service.list_knowledge_bases(session, owner_id=user.id)
    return KnowledgeBaseList(items=[_public(s) for s in summaries])


@router.get("/{kb_id}", response_model=KnowledgeBasePublic)
def get_knowledge_base(kb_id: str, session: SessionDep, user: CurrentUser) -> KnowledgeBasePublic:
    kb = service.get_knowledge_base(session, owner_id=user.id, kb_id=kb_id)
    return _public(service.summarize(session, kb))


@router.delete("/{kb_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_knowledge_base(kb_id: str, session: SessionDep, user: CurrentUser) -> Response:
    """Forget the knowledge base with its documents, chunks and vectors."""
    service.delete_knowledge_base(session, owner_id=user.id, kb_id=kb_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{kb_id}/documents",
    status_code=status.HTTP_201_CREATED,
    response_model=DocumentPublic,
    openapi_extra=_DOCUMENT_BODY,
)
def add_document(
    kb_id: str,
    source: DocumentSourceDep,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
) -> DocumentPublic:
    """Read, chunk and index a document (JSON text or URL, or a multipart PDF) now."""
    document = service.add_document(
        session, settings=settings, owner_id=user.id, kb_id=kb_id, source=source
    )
    return _document(document)


@router.get("/{kb_id}/documents", response_model=DocumentList)
def list_documents(kb_id: str, session: SessionDep, user: CurrentUser) -> DocumentList:
    documents = service.list_documents(session, owner_id=user.id, kb_id=kb_id)
    return DocumentList(items=[_document(d) for d in documents])


@router.delete("/{kb_id}/documents/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_document(
    kb_id: str, document_id: str, session: SessionDep, user: CurrentUser
) -> Response:
    """Forget one document with its chunks and vectors."""
    service.delete_document(session, owner_id=user.id, kb_id=kb_id, document_id=document_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{kb_id}/query", response_model=QueryResponse)
def query_knowledge_base(
    kb_id: str,
    body: QueryRequest,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
) -> QueryResponse:
    """The best chunks for a query, as a knowledgeBaseQuery node finds them."""
    results, mode = service.search(
        session,
        settings=settings,
        owner_id=user.id,
        kb_id=kb_id,
        text=body.query,
        top_k=body.top_k,
        threshold=body.similarity_threshold,
    )
    return QueryResponse(
        query=body.query,
        results=[
            SearchHit.model_validate(hit if body.include_metadata else {**hit, "metadata": None})
            for hit in results
        ],
        count=len(results),
        knowledge_base_id=kb_id,
        mode=mode,
    )
