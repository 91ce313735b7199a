"""GitHub: the repository a node names, file paths, file contents as text, and the calls that
read first (a pull request's base branch, a release by tag, a run's failed job).

Builders name a repository as `owner` + `repo` or as one `repo: owner/name` (a webhook's
`repository.full_name`), which no single path segment can hold: repository operations write
their path as GitHub's curl examples do (`/repos/OWNER/REPO/pulls`) and `repository` fills in
the two segments, each URL-encoded and checked (no `.`/`..`). File paths (`docs/api.yaml`) and
branch names (`feature/x`) are several segments, each checked the same way.
"""

import base64
import binascii
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flowmaestro_dagster.nodes.connectors.declarative import (
    HookApi,
    ParameterError,
    PreparedRequest,
)

REPO_PREFIX = "/repos/OWNER/REPO"
_FAILED = ("failure", "timed_out", "startup_failure", "cancelled")
_GITHUB_URL = "https://github.com/"


def segment(name: str, value: Any) -> str:
    """One URL-encoded path segment; ParameterError naming `name` when it could climb out."""
    text = str(value).strip()
    if not text or text in (".", "..") or "/" in text or "\\" in text:
        raise ParameterError(name, f"parameters.{name} must be one path segment: {text[:80]!r}")
    return quote(text, safe="@:!$'()*,;=")


def segments(name: str, value: Any) -> str:
    """A path of several segments (`docs/api.yaml`, `feature/x`), each encoded and checked."""
    parts = [p for p in str(value).strip().strip("/").split("/") if p != ""]
    if not parts:
        raise ParameterError(name, f"parameters.{name} is empty")
    return "/".join(segment(name, part) for part in parts)


def owner_and_repo(params: Mapping[str, Any]) -> tuple[str, str]:
    """(owner, repo) from `repo: owner/name` (or its github.com URL), else `owner` + `repo`."""
    repo = str(params.get("repo") or "").strip()
    if repo.startswith(_GITHUB_URL):
        repo = repo[len(_GITHUB_URL) :].removesuffix(".git").strip("/")
    if "/" in repo:
        owner, _, name = repo.partition("/")
        if "/" in name or not owner or not name:
            raise ParameterError("repo", f"parameters.repo must be owner/name: {repo[:80]!r}")
        given = str(params.get("owner") or "").strip()
        if given and given.lower() != owner.lower():
            raise ParameterError(
                "owner", f"parameters.owner {given!r} differs from parameters.repo {repo!r}"
            )
        return segment("repo", owner), segment("repo", name)
    if not params.get("owner"):
        raise ParameterError(
            "owner", "give parameters.owner (or the connection's owner), or repo as owner/name"
        )
    return segment("owner", params["owner"]), segment("repo", repo)


def repo_path(params: Mapping[str, Any]) -> str:
    owner, name = owner_and_repo(params)
    return f"/repos/{owner}/{name}"


def repository(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """`/repos/OWNER/REPO/...`: the node's repository in place of OWNER/REPO."""
    if prepared.path.startswith(REPO_PREFIX):
        prepared.path = repo_path(params) + prepared.path[len(REPO_PREFIX) :]
    return prepared


def file_path(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """Contents: the repository, and the file's path (several segments) in place of PATH."""
    prepared = repository(prepared, params, api)
    prepared.path = prepared.path.replace("/PATH", "/" + segments("path", params["path"]), 1)
    return prepared


def put_file(prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi) -> PreparedRequest:
    """createOrUpdateFile: the text `content` base64-encoded, as the API wants it (a value
    already base64 is sent as it is with `encoding: base64`)."""
    prepared = file_path(prepared, params, api)
    content = params.get("content")
    if content is None:
        raise ParameterError("content", "createOrUpdateFile needs parameters.content")
    if str(params.get("encoding") or "").lower() == "base64":
        try:
            base64.b64decode(str(content), validate=True)
        except (binascii.Error, ValueError):
            raise ParameterError("content", "parameters.content is not base64") from None
        encoded = str(content)
    else:
        encoded = base64.b64encode(str(content).encode("utf-8")).decode("ascii")
    prepared.json = {**(prepared.json or {}), "content": encoded}
    return prepared


def decode_content(data: Any, params: Mapping[str, Any]) -> Any:
    """getContent: a file's base64 `content` also as `text` (UTF-8; binary files keep only
    `content`); a directory's listing is left as it is."""
    if not isinstance(data, Mapping) or data.get("encoding") != "base64":
        return data
    decoded = dict(data)
    try:
        raw = base64.b64decode(str(data.get("content") or ""))
        decoded["text"] = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        pass
    return decoded


def pull_request_base(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """createPullRequest: without `base`, the repository's default branch."""
    prepared = repository(prepared, params, api)
    if not params.get("base"):
        repo = api.get(repo_path(params))
        branch = repo.get("default_branch") if isinstance(repo, Mapping) else None
        if not branch:
            raise ParameterError("base", "give parameters.base: the repository names no default")
        prepared.json = {**(prepared.json or {}), "base": branch}
    return prepared


def compare(prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi) -> PreparedRequest:
    """compareCommits: `base...head` (branch names may hold slashes) in place of BASEHEAD."""
    prepared = repository(prepared, params, api)
    basehead = f"{segments('base', params['base'])}...{segments('head', params['head'])}"
    prepared.path = prepared.path.replace("/BASEHEAD", "/" + basehead, 1)
    return prepared


def release_lookup(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getRelease: by `release_id`, else by `tag`, else the latest release."""
    prepared = repository(prepared, params, api)
    base = repo_path(params) + "/releases"
    if params.get("release_id"):
        prepared.path = f"{base}/{segment('release_id', params['release_id'])}"
    elif params.get("tag") and str(params["tag"]).lower() != "latest":
        prepared.path = f"{base}/tags/{segments('tag', params['tag'])}"
    return prepared


def release_by_tag(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """updateRelease: the release named by `release_id`, or found by its `tag`."""
    prepared = repository(prepared, params, api)
    release_id = params.get("release_id")
    if not release_id:
        tag = params.get("tag")
        if not tag:
            raise ParameterError("release_id", "updateRelease needs parameters.release_id or .tag")
        found = api.get(f"{repo_path(params)}/releases/tags/{segments('tag', tag)}")
        release_id = found.get("id") if isinstance(found, Mapping) else None
        if not release_id:
            raise ParameterError("tag", f"no release is tagged {str(tag)[:80]!r}")
    prepared.path = prepared.path.replace("/RELEASE_ID", "/" + segment("release_id", release_id))
    return prepared


def run_job_logs(
    prepared: PreparedRequest, params: Mapping[str, Any], api: HookApi
) -> PreparedRequest:
    """getWorkflowRunLogs: the plain-text log of a job (GitHub keeps a run's logs as a zip
    archive; a job's are text an LLM can read). `jobId` names it; else the run's job called
    `jobName`, else its first failed job, else its first job."""
    prepared = repository(prepared, params, api)
    job_id = params.get("job_id")
    if not job_id:
        run_id = params.get("run_id")
        if not run_id:
            raise ParameterError("run_id", "getWorkflowRunLogs needs parameters.runId or .jobId")
        listing = api.get(
            f"{repo_path(params)}/actions/runs/{segment('run_id', run_id)}/jobs",
            [("filter", "latest"), ("per_page", "100")],
        )
        jobs = [j for j in (listing or {}).get("jobs") or [] if isinstance(j, Mapping)]
        wanted = str(params.get("job_name") or "").strip().lower()
        named = [j for j in jobs if wanted and str(j.get("name", "")).lower() == wanted]
        failed = [j for j in jobs if j.get("conclusion") in _FAILED]
        candidates = named or failed or jobs
        chosen = candidates[0] if candidates else None
        if chosen is None or not chosen.get("id"):
            field = "job_name" if wanted else "run_id"
            raise ParameterError(field, f"run {run_id} has no job to read logs from")
        job_id = chosen["id"]
    prepared.path = prepared.path.replace("/JOB_ID", "/" + segment("job_id", job_id))
    return prepared


def log_tail(data: Any, params: Mapping[str, Any]) -> Any:
    """The log text, only its last `tailLines` lines when the node asks (a prompt's budget)."""
    lines = params.get("tail_lines")
    if isinstance(data, str) and isinstance(lines, int) and lines > 0:
        return "\n".join(data.splitlines()[-lines:])
    return data
