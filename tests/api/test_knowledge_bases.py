"""The knowledge-base API on SQLite and PostgreSQL: CRUD scoped to the key's user, documents
as JSON text, URLs and multipart PDFs indexed in the request (all or nothing), search, and
the problem+json answers (404 for others' knowledge bases, 413 over a cap, 422 naming the field)."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from flowmaestro_api.main import create_app
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.settings import HttpSettings, KnowledgeSettings
from tests.api.conftest import UNREACHABLE_DAGSTER, row_counts
from tests.test_knowledge_base import ARTICLE, BREAD, CATS, PageServer, make_pdf

PDF_CAP = 20_000


@pytest.fixture
def api_settings(database_url: str) -> ApiSettings:
    """The API with loopback allowed (the test's page server) and small caps to go over."""
    return ApiSettings(
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        graphql_timeout_seconds=2,
        http=HttpSettings(allow_loopback=True),
        knowledge=KnowledgeSettings(
            max_document_bytes=PDF_CAP,
            max_chunks_per_document=20,
            max_documents_per_knowledge_base=5,
        ),
    )


def create(client: TestClient, auth: dict[str, str], name: str = "Pets") -> dict[str, Any]:
    response = client.post("/knowledge-bases", json={"name": name}, headers=auth)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def add_text(
    client: TestClient, auth: dict[str, str], kb_id: str, text: str, title: str | None = None
) -> dict[str, Any]:
    response = client.post(
        f"/knowledge-bases/{kb_id}/documents", json={"title": title, "text": text}, headers=auth
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def query(client: TestClient, auth: dict[str, str], kb_id: str, **body: Any) -> dict[str, Any]:
    response = client.post(f"/knowledge-bases/{kb_id}/query", json=body, headers=auth)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def test_knowledge_bases_crud(client: TestClient, auth: dict[str, str]) -> None:
    created = create(client, auth, "Handbook")
    assert created["name"] == "Handbook" and created["document_count"] == 0
    assert created["embedding_model"] is None
    add_text(client, auth, created["id"], CATS, "Cats")
    listed = client.get("/knowledge-bases", headers=auth).json()["items"]
    assert [(kb["id"], kb["document_count"], kb["chunk_count"]) for kb in listed] == [
        (created["id"], 1, 1)
    ]
    one = client.get(f"/knowledge-bases/{created['id']}", headers=auth).json()
    assert (one["name"], one["document_count"]) == ("Handbook", 1)
    assert client.delete(f"/knowledge-bases/{created['id']}", headers=auth).status_code == 204
    gone = problem(client.get(f"/knowledge-bases/{created['id']}", headers=auth), 404)
    assert created["id"] in gone["detail"]
    assert client.get("/knowledge-bases", headers=auth).json()["items"] == []


def test_documents_are_indexed_listed_searched_and_deleted(
    client: TestClient, auth: dict[str, str]
) -> None:
    kb_id = create(client, auth)["id"]
    cats = add_text(client, auth, kb_id, CATS, "Cats")
    tagged = client.post(
        f"/knowledge-bases/{kb_id}/documents",
        json={"title": "Tagged", "text": "Hamsters hoard seeds.", "metadata": {"team": "pets"}},
        headers=auth,
    )
    assert tagged.status_code == 201 and tagged.json()["metadata"] == {"team": "pets"}
    hamsters = query(client, auth, kb_id, query="hamsters", includeMetadata=True)["results"]
    assert hamsters[0]["metadata"] == {"team": "pets"}
    assert query(client, auth, kb_id, query="hamsters")["results"][0]["metadata"] is None
    path = f"/knowledge-bases/{kb_id}/documents/{tagged.json()['id']}"
    assert client.delete(path, headers=auth).status_code == 204
    assert (cats["source_kind"], cats["chunk_count"], cats["char_count"]) == ("text", 1, len(CATS))
    add_text(client, auth, kb_id, BREAD, "Bread")
    documents = client.get(f"/knowledge-bases/{kb_id}/documents", headers=auth).json()["items"]
    assert [d["title"] for d in documents] == ["Cats", "Bread"]
    found = query(client, auth, kb_id, query="fresh bread", topK=3, similarityThreshold=0.1)
    assert found["count"] == 1 and found["knowledgeBaseId"] == kb_id and found["mode"] == "fulltext"
    hit = found["results"][0]
    assert (hit["documentTitle"], hit["chunkIndex"], hit["score"], hit["text"]) == (
        "Bread",
        0,
        1.0,
        BREAD,
    )
    path = f"/knowledge-bases/{kb_id}/documents/{documents[1]['id']}"
    assert client.delete(path, headers=auth).status_code == 204
    assert query(client, auth, kb_id, query="fresh bread")["results"] == []
    problem(client.delete(path, headers=auth), 404)


def test_another_users_knowledge_base_is_404_everywhere(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    kb_id = create(client, auth)["id"]
    add_text(client, auth, kb_id, CATS)
    base = f"/knowledge-bases/{kb_id}"
    for method, path, body in (
        ("GET", base, None),
        ("DELETE", base, None),
        ("GET", f"{base}/documents", None),
        ("POST", f"{base}/documents", {"text": "intruder"}),
        ("POST", f"{base}/query", {"query": "cats"}),
    ):
        response = client.request(method, path, json=body, headers=other_auth)
        assert problem(response, 404)["code"] == "not_found", (method, path)
    assert client.get("/knowledge-bases", headers=other_auth).json()["items"] == []
    assert query(client, auth, kb_id, query="cats")["count"] == 1  # untouched


def test_invalid_requests_are_422_naming_the_field(
    client: TestClient, auth: dict[str, str]
) -> None:
    kb_id = create(client, auth)["id"]
    fields = []
    for path, body in (
        ("/knowledge-bases", {"name": ""}),
        (f"/knowledge-bases/{kb_id}/query", {"query": "cats", "topK": 0}),
        (f"/knowledge-bases/{kb_id}/query", {"query": "cats", "similarityThreshold": 1.5}),
        (f"/knowledge-bases/{kb_id}/query", {"query": ""}),
        (f"/knowledge-bases/{kb_id}/documents", {"title": "neither text nor url"}),
        (f"/knowledge-bases/{kb_id}/documents", {"text": "both", "url": "http://x.example/"}),
        (f"/knowledge-bases/{kb_id}/documents", {"text": 42}),
    ):
        body_problems = problem(client.post(path, json=body, headers=auth), 422)["problems"]
        fields.append(body_problems[0]["field"])
    assert fields == ["name", "topK", "similarityThreshold", "query", "text", "text", "text"]
    malformed = client.post(
        f"/knowledge-bases/{kb_id}/documents",
        content=b'{"text": ',
        headers={**auth, "Content-Type": "application/json"},
    )
    assert problem(malformed, 422)["code"] == "malformed_json"
    wrong_type = client.post(
        f"/knowledge-bases/{kb_id}/documents",
        content=b"just text",
        headers={**auth, "Content-Type": "text/plain"},
    )
    assert problem(wrong_type, 415)["code"] == "unsupported_media_type"


def test_a_pdf_upload_is_indexed_by_its_content(client: TestClient, auth: dict[str, str]) -> None:
    kb_id = create(client, auth)["id"]
    pdf = make_pdf(["Onboarding guide", "Laptops are issued on the first day."])
    response = client.post(
        f"/knowledge-bases/{kb_id}/documents",
        files={"file": ("guide.bin", pdf, "application/octet-stream")},  # a PDF by content
        data={"title": "Onboarding\x00"},  # a form is not JSON: no guard read it
        headers=auth,
    )
    assert response.status_code == 201, response.text
    document = response.json()
    assert (document["title"], document["source_kind"], document["source"]) == (
        "Onboarding",
        "pdf",
        "guide.bin",
    )
    assert document["metadata"] == {"pages": 2}
    hit = query(client, auth, kb_id, query="laptops")["results"][0]
    assert "Laptops are issued on the first day." in hit["text"]


def test_uploads_that_are_not_pdfs_or_too_large_are_refused_and_write_nothing(
    client: TestClient, auth: dict[str, str], database_url: str
) -> None:
    kb_id = create(client, auth)["id"]
    before = row_counts(database_url)
    path = f"/knowledge-bases/{kb_id}/documents"
    not_pdf = client.post(
        path,
        files={"file": ("fake.pdf", b"<html>not a pdf</html>", "application/pdf")},
        headers=auth,
    )
    assert problem(not_pdf, 422)["problems"][0]["field"] == "file"
    too_large = client.post(
        path, files={"file": ("big.pdf", b"%PDF-1.4\n" + b"0" * PDF_CAP)}, headers=auth
    )
    assert problem(too_large, 413)["code"] == "document_too_large"
    no_file = client.post(
        path, data={"title": "no file"}, files={"other": ("x", b"x")}, headers=auth
    )
    assert problem(no_file, 422)["problems"][0]["field"] == "file"
    many_chunks = client.post(path, json={"text": "A sentence. " * 2000}, headers=auth)
    assert "MAX_CHUNKS_PER_DOCUMENT" in problem(many_chunks, 413)["detail"]
    assert row_counts(database_url) == before


def test_a_url_document_is_fetched_through_the_guard(
    client: TestClient, auth: dict[str, str], api_settings: ApiSettings
) -> None:
    kb_id = create(client, auth)["id"]
    with PageServer({"/cats": (200, "text/html", ARTICLE)}) as server:
        url = server.url("/cats")
        response = client.post(
            f"/knowledge-bases/{kb_id}/documents", json={"url": url}, headers=auth
        )
        assert response.status_code == 201, response.text
        assert (response.json()["title"], response.json()["source"]) == ("All about cats", url)
        guarded = api_settings.model_copy(update={"http": HttpSettings()})
        with TestClient(create_app(guarded), raise_server_exceptions=False) as strict:
            refused = strict.post(
                f"/knowledge-bases/{kb_id}/documents", json={"url": url}, headers=auth
            )
    body = problem(refused, 422)
    assert body["problems"][0]["field"] == "url" and "loopback" in body["detail"]
    assert [r.path for r in server.requests] == ["/cats"]
    assert query(client, auth, kb_id, query="whiskers")["results"][0]["source"] == url


def test_the_document_cap_is_a_conflict(client: TestClient, auth: dict[str, str]) -> None:
    kb_id = create(client, auth)["id"]
    for i in range(5):
        add_text(client, auth, kb_id, f"note {i}")
    full = client.post(
        f"/knowledge-bases/{kb_id}/documents", json={"text": "one more"}, headers=auth
    )
    assert problem(full, 409)["code"] == "knowledge_base_full"


def test_the_openapi_document_lists_the_routes_and_both_upload_forms(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    documents = paths["/knowledge-bases/{kb_id}/documents"]["post"]["requestBody"]["content"]
    assert set(documents) == {"application/json", "multipart/form-data"}
    assert {"/knowledge-bases", "/knowledge-bases/{kb_id}/query"} <= set(paths)
