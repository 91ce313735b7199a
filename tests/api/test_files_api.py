"""`/workflows/{id}/files` and `/files/download`: uploads streamed into the workflow's area
with the type sniffed from content, the upload cap (413, nothing kept), listing, signed
expiring download links (expired, altered and foreign tokens refused), owner-only access, and
an uploaded reference reaching an audioInput node of that workflow (and no other)."""

import hashlib
import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from itsdangerous import URLSafeTimedSerializer
from pydantic import SecretStr

from flowmaestro_api.main import create_app
from flowmaestro_api.routes import files as files_routes
from flowmaestro_api.settings import ApiSettings
from flowmaestro_dagster.errors import NodeExecutionError
from flowmaestro_dagster.nodes.filestore import FileStore
from flowmaestro_dagster.settings import FileSettings
from tests.api.conftest import GREETER, UNREACHABLE_DAGSTER, make_key
from tests.services import database_from, migrated_template
from tests.test_file_nodes import run

MB = 1024 * 1024
SECRET = "files-test-secret-0123456789abcdef"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 8


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_template("sqlite", tmp_path_factory.mktemp("files-tpl")) as path:
        yield path


@pytest.fixture
def database_url(template: str, tmp_path: Path) -> Iterator[str]:
    """SQLite only: these routes touch the database for ownership alone."""
    with database_from("sqlite", template, tmp_path) as url:
        yield url


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "files"


@pytest.fixture
def client(database_url: str, store_dir: Path) -> Iterator[TestClient]:
    settings = ApiSettings(
        database_url=database_url,
        dagster_graphql_url=UNREACHABLE_DAGSTER,
        graphql_timeout_seconds=1,
        secret_key=SecretStr(SECRET),
        public_api_url="http://testserver",
        max_request_bytes=64 * 1024,
        files=FileSettings(url=str(store_dir), max_upload_mb=1, max_signed_url_ttl_s=3600),
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def auth(database_url: str) -> dict[str, str]:
    return make_key(database_url, "ada@example.com")


@pytest.fixture
def other_auth(database_url: str) -> dict[str, str]:
    return make_key(database_url, "grace@example.com")


@pytest.fixture
def workflow_id(client: TestClient, auth: dict[str, str]) -> str:
    response = client.post("/workflows", json={"definition": GREETER}, headers=auth)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def upload(
    client: TestClient,
    auth: dict[str, str],
    workflow_id: str,
    data: bytes,
    name: str = "a.bin",
    content_type: str = "application/octet-stream",
    **fields: str,
) -> Any:
    return client.post(
        f"/workflows/{workflow_id}/files",
        files={"file": (name, data, content_type)},
        data=fields,
        headers=auth,
    )


def stored_files(store_dir: Path) -> list[Path]:
    return sorted(p for p in store_dir.rglob("*") if p.is_file())


def wav_bytes(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(b"\x00\x00" * int(seconds * 8000))
    return buffer.getvalue()


# -- upload ----------------------------------------------------------------------------------------


def test_upload_answers_a_reference_with_the_sniffed_type_and_digest(
    client: TestClient, auth: dict[str, str], workflow_id: str, store_dir: Path
) -> None:
    response = upload(
        client, auth, workflow_id, PNG, name="../../évil name.txt", content_type="text/plain"
    )
    assert response.status_code == 201, response.text
    ref = response.json()
    assert ref["type"] == "file"
    assert ref["mediaType"] == "image/png"  # by content: the client said text/plain
    assert ref["size"] == len(PNG)
    assert ref["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert ref["name"] == "évil name.txt"
    assert ref["path"].startswith("/uploads/") and ref["path"].endswith("/évil name.txt")
    on_disk = store_dir / "workflows" / workflow_id / ref["path"].lstrip("/")
    assert on_disk.read_bytes() == PNG


def test_upload_answers_the_reference_nodes_output(
    client: TestClient, auth: dict[str, str], workflow_id: str, store_dir: Path
) -> None:
    """The same keys as a node's file output, `filename` too: a files node hands the upload on
    as is, and builder templates read `{{inputDoc.filename}}` (the converter's router)."""
    ref = upload(client, auth, workflow_id, b"%PDF-1.4 memo", name="memo.pdf").json()
    assert ref["filename"] == ref["name"] == "memo.pdf"
    stored = FileStore(str(store_dir), max_bytes=MB).area(workflow_id).stat(ref["path"])
    assert ref == stored.to_value()


def test_upload_to_a_path_and_a_folder(
    client: TestClient, auth: dict[str, str], workflow_id: str
) -> None:
    ref = upload(client, auth, workflow_id, b"hello", path="/inbox/hello.txt").json()
    assert ref["path"] == "/inbox/hello.txt" and ref["mediaType"] == "text/plain"
    ref = upload(client, auth, workflow_id, b"x", name="n.txt", path="inbox/sub/").json()
    assert ref["path"] == "/inbox/sub/n.txt"
    again = upload(client, auth, workflow_id, b"bye", path="/inbox/hello.txt")
    assert again.status_code == 409
    replaced = upload(client, auth, workflow_id, b"bye", path="/inbox/hello.txt", overwrite="true")
    assert replaced.status_code == 201 and replaced.json()["size"] == 3


@pytest.mark.parametrize("path", ["../escape.txt", "/a/../../b", "file:///etc/passwd", "a\\b"])
def test_upload_path_leaving_the_area_is_422_naming_path(
    client: TestClient, auth: dict[str, str], workflow_id: str, store_dir: Path, path: str
) -> None:
    response = upload(client, auth, workflow_id, b"x", path=path)
    assert response.status_code == 422, response.text
    assert response.json()["problems"][0]["field"] == "path"
    assert stored_files(store_dir) == []


def test_upload_accept_checks_the_content(
    client: TestClient, auth: dict[str, str], workflow_id: str, store_dir: Path
) -> None:
    refused = upload(client, auth, workflow_id, PNG, name="x.wav", accept="audio/*")
    assert refused.status_code == 415
    assert "image/png" in refused.json()["detail"]
    assert stored_files(store_dir) == []
    ok = upload(client, auth, workflow_id, wav_bytes(), name="x.wav", accept="audio/*, pdf")
    assert ok.status_code == 201 and ok.json()["mediaType"] == "audio/x-wav"
    assert upload(client, auth, workflow_id, PNG, accept="png").status_code == 201


def test_upload_over_the_limit_is_413_and_nothing_is_kept(
    client: TestClient, auth: dict[str, str], workflow_id: str, store_dir: Path
) -> None:
    just_over = upload(client, auth, workflow_id, b"a" * (MB + 1))  # past the guard: the store
    assert just_over.status_code == 413, just_over.text
    assert "FLOWMAESTRO_FILES__MAX_UPLOAD_MB" in just_over.json()["detail"]
    far_over = upload(client, auth, workflow_id, b"a" * (2 * MB))  # the request guard
    assert far_over.status_code == 413
    assert stored_files(store_dir) == []  # no partial file either
    at_limit = upload(client, auth, workflow_id, b"a" * MB)
    assert at_limit.status_code == 201
    # other routes keep the global body limit (64 KiB here)
    big_json = client.post("/workflows", content=b" " * (128 * 1024), headers=auth)
    assert big_json.status_code == 413


def test_upload_needs_multipart_and_a_file_field(
    client: TestClient, auth: dict[str, str], workflow_id: str
) -> None:
    assert client.post(f"/workflows/{workflow_id}/files", json={}, headers=auth).status_code == 415
    response = client.post(
        f"/workflows/{workflow_id}/files",
        data={"path": "/x"},
        files={"other": ("a", b"x")},
        headers=auth,
    )
    assert response.status_code == 422
    assert response.json()["problems"][0]["field"] == "file"


# -- owner only ------------------------------------------------------------------------------------


def test_another_users_workflow_is_404_everywhere(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    workflow_id: str,
    store_dir: Path,
) -> None:
    ref = upload(client, auth, workflow_id, b"mine", path="/a.txt").json()
    assert upload(client, other_auth, workflow_id, b"theirs").status_code == 404
    assert client.get(f"/workflows/{workflow_id}/files", headers=other_auth).status_code == 404
    signed = client.post(
        f"/workflows/{workflow_id}/files/url", json={"path": ref["path"]}, headers=other_auth
    )
    assert signed.status_code == 404
    assert client.get(f"/workflows/{workflow_id}/files").status_code == 401
    assert [p.name for p in stored_files(store_dir)] == ["a.txt"]


# -- list ------------------------------------------------------------------------------------------


def test_list_with_a_prefix(client: TestClient, auth: dict[str, str], workflow_id: str) -> None:
    upload(client, auth, workflow_id, b"one", path="/inbox/1.txt")
    upload(client, auth, workflow_id, PNG, path="/inbox/2.png")
    upload(client, auth, workflow_id, b"three", path="/other/3.txt")
    listed = client.get(f"/workflows/{workflow_id}/files", headers=auth).json()
    assert [i["path"] for i in listed["items"]] == ["/inbox/1.txt", "/inbox/2.png", "/other/3.txt"]
    inbox = client.get(
        f"/workflows/{workflow_id}/files", params={"prefix": "/inbox"}, headers=auth
    ).json()
    assert inbox["items"] == [
        {"path": "/inbox/1.txt", "name": "1.txt", "size": 3, "mediaType": "text/plain"},
        {"path": "/inbox/2.png", "name": "2.png", "size": len(PNG), "mediaType": "image/png"},
    ]
    assert inbox["count"] == 2 and inbox["truncated"] is False
    one = client.get(f"/workflows/{workflow_id}/files", params={"limit": 1}, headers=auth).json()
    assert len(one["items"]) == 1 and one["count"] == 3 and one["truncated"] is True
    bad = client.get(f"/workflows/{workflow_id}/files", params={"prefix": "../"}, headers=auth)
    assert bad.status_code == 422


# -- signed download links -------------------------------------------------------------------------


def sign(client: TestClient, auth: dict[str, str], workflow_id: str, **body: Any) -> Any:
    return client.post(f"/workflows/{workflow_id}/files/url", json=body, headers=auth)


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def test_signed_url_downloads_the_same_bytes(
    client: TestClient, auth: dict[str, str], workflow_id: str
) -> None:
    ref = upload(client, auth, workflow_id, PNG, name="chart.png").json()
    signed = sign(client, auth, workflow_id, path=ref["path"], expiresIn=60)
    assert signed.status_code == 200, signed.text
    body = signed.json()
    assert body["url"].startswith("http://testserver/files/download?token=")
    assert body["path"] == ref["path"]
    download = client.get(body["url"])  # no API key: the link is the key
    assert download.status_code == 200
    assert download.content == PNG
    assert hashlib.sha256(download.content).hexdigest() == ref["sha256"]
    assert download.headers["content-type"] == "image/png"
    assert download.headers["content-disposition"].startswith('attachment; filename="chart.png"')
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-length"] == str(len(PNG))


def test_a_large_file_downloads_whole(
    client: TestClient, auth: dict[str, str], workflow_id: str
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: more than one chunk with the head
    ref = upload(client, auth, workflow_id, data).json()
    url = sign(client, auth, workflow_id, path=ref["path"]).json()["url"]
    assert client.get(url).content == data


def test_expired_links_are_410(
    client: TestClient, auth: dict[str, str], workflow_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = upload(client, auth, workflow_id, b"soon gone").json()
    url = sign(client, auth, workflow_id, path=ref["path"], expiresIn=1).json()["url"]
    assert client.get(url).status_code == 200
    start = files_routes.now()
    monkeypatch.setattr(files_routes, "now", lambda: start + 5)
    expired = client.get(url)
    assert expired.status_code == 410
    assert "expired" in expired.json()["detail"]


def test_altered_and_foreign_tokens_are_403(
    client: TestClient, auth: dict[str, str], workflow_id: str
) -> None:
    ref = upload(client, auth, workflow_id, b"secret").json()
    token = token_of(sign(client, auth, workflow_id, path=ref["path"]).json()["url"])
    other = upload(client, auth, workflow_id, b"other").json()
    other_token = token_of(sign(client, auth, workflow_id, path=other["path"]).json()["url"])
    payload, stamp, mac = token.rsplit(".", 2)
    # The MAC's first character: all six of its bits are signature bits (the last one's low
    # bits are base64 padding, which decodes the same whatever they are).
    flipped = ".".join([payload, stamp, ("A" if mac[0] != "A" else "B") + mac[1:]])
    swapped = ".".join([other_token.rsplit(".", 2)[0], stamp, mac])  # its payload, our MAC
    assert swapped != token and payload
    foreign = URLSafeTimedSerializer("another-key-0123456789", salt=files_routes.SALT).dumps(
        {"w": workflow_id, "p": ref["path"], "e": files_routes.now() + 60}
    )
    other_salt = URLSafeTimedSerializer(SECRET, salt="something else").dumps(
        {"w": workflow_id, "p": ref["path"], "e": files_routes.now() + 60}
    )
    for bad in (flipped, swapped, "not-a-token", foreign, other_salt, "x" + token):
        response = client.get("/files/download", params={"token": bad})
        assert response.status_code == 403, (bad, response.text)
        assert "not valid" in response.json()["detail"]
    assert client.get("/files/download").status_code == 422  # no token at all
    assert client.get("/files/download", params={"token": other_token}).content == b"other"


def test_sign_checks_path_and_lifetime(
    client: TestClient, auth: dict[str, str], workflow_id: str
) -> None:
    ref = upload(client, auth, workflow_id, b"x").json()
    assert sign(client, auth, workflow_id, path="/nope.txt").status_code == 404
    escape = sign(client, auth, workflow_id, path="../x")
    assert escape.status_code == 422 and escape.json()["problems"][0]["field"] == "path"
    too_long = sign(client, auth, workflow_id, path=ref["path"], expiresIn=7200)
    assert too_long.status_code == 422
    assert too_long.json()["problems"][0]["field"] == "expiresIn"
    assert sign(client, auth, workflow_id, path=ref["path"], expiresIn=0).status_code == 422


def test_a_link_to_a_deleted_file_is_404(
    client: TestClient, auth: dict[str, str], workflow_id: str, store_dir: Path
) -> None:
    ref = upload(client, auth, workflow_id, b"x", path="/tmp.txt").json()
    url = sign(client, auth, workflow_id, path=ref["path"]).json()["url"]
    (store_dir / "workflows" / workflow_id / "tmp.txt").unlink()
    assert client.get(url).status_code == 404


# -- an uploaded file reaching an execution --------------------------------------------------------


def test_an_uploaded_reference_reaches_audio_input_of_its_workflow_only(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    workflow_id: str,
    store_dir: Path,
) -> None:
    ref = upload(client, auth, workflow_id, wav_bytes(2.0), name="voice.wav").json()
    store = FileStore(str(store_dir), max_bytes=10 * MB)
    output = run(
        "audioInput",
        {"acceptedFormats": ["mp3", "wav"], "outputVariable": "voiceMessage"},
        store,
        inputs={"voiceMessage": ref},
        workflow=workflow_id,
    ).output["voiceMessage"]
    assert output["file"]["sha256"] == ref["sha256"]
    assert output["durationSeconds"] == 2.0
    # the same reference given to another workflow's execution opens nothing of this one
    other = client.post("/workflows", json={"definition": GREETER}, headers=other_auth).json()
    with pytest.raises(NodeExecutionError, match="no file"):
        run(
            "audioInput",
            {"inputVariable": "voiceMessage"},
            store,
            inputs={"voiceMessage": ref},
            workflow=other["id"],
        )
