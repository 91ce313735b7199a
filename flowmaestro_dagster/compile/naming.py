"""Deterministic, collision-free Dagster names for node ids, handles and workflows."""

import hashlib
import re
from collections.abc import Iterable

# Names Dagster refuses for nodes, inputs and outputs (dagster._core.definitions.utils).
DISALLOWED_NAMES = frozenset(
    {
        "context",
        "conf",
        "config",
        "meta",
        "arg_dict",
        "dict",
        "input_arg_dict",
        "output_arg_dict",
        "int",
        "str",
        "float",
        "bool",
        "input",
        "output",
        "type",
    }
)
MAX_NAME = 80
_INVALID = re.compile(r"[^A-Za-z0-9_]+")


def _digest(raw: str, size: int = 6) -> str:
    return hashlib.sha1(raw.encode("utf-8")).hexdigest()[:size]


def sanitize(raw: str, *, reserved: Iterable[str] = ()) -> str:
    """A valid Dagster name that reads like `raw` (`llm-1` → `llm_1`, `input` → `input_`)."""
    name = _INVALID.sub("_", raw).strip("_") or "n"
    if name[0].isdigit():
        name = f"n_{name}"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 7]}_{_digest(raw)}"
    if name in DISALLOWED_NAMES or name in set(reserved):
        name = f"{name}_"
    return name


def unique_aliases(raw_names: Iterable[str], *, reserved: Iterable[str] = ()) -> dict[str, str]:
    """Sanitised names for a set of ids; ids that would collide get a suffix from their hash.

    The id whose sanitised form equals itself keeps the plain name (else the first one in
    sorted order), so adding a node never renames the existing ones' ops.
    """
    reserved_set = set(reserved)
    groups: dict[str, list[str]] = {}
    for raw in raw_names:
        groups.setdefault(sanitize(raw, reserved=reserved_set), []).append(raw)
    aliases: dict[str, str] = {}
    taken = set(groups)
    for name, members in groups.items():
        keeper = name if name in members else sorted(members)[0]
        for raw in members:
            if raw == keeper:
                aliases[raw] = name
                continue
            candidate = f"{name}_{_digest(raw)}"
            size = 6
            while candidate in taken:
                size += 2
                candidate = f"{name}_{_digest(raw, size)}"
            taken.add(candidate)
            aliases[raw] = candidate
    return aliases


_SLUG = re.compile(r"[^a-z0-9]+")
LABEL_CHARS = 40


def label_slug(label: str) -> str:
    """`Generate Auto-Response!` → `generate_auto_response` (never contains `__`)."""
    slug = _SLUG.sub("_", label.lower()).strip("_")[:LABEL_CHARS].strip("_")
    return f"n_{slug}" if slug[:1].isdigit() else slug


def labelled_aliases(nodes: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """Op aliases that show a node's label in the Dagster UI: `<label>__<id>`.

    The alias depends only on the node's own id and label, so adding a node renames nothing
    unless the new node has the same label *and* an id that sanitises the same (then
    `unique_aliases` decides, as for plain ids). A node without a label of its own (`None`)
    keeps the plain id alias. A label part never contains `__`; a composite that equals
    another node's id gets a hash suffix.
    """
    pairs = list(nodes)
    raw: dict[str, str] = {}
    for node_id, label in pairs:
        slug = label_slug(label) if label else ""
        plain = sanitize(node_id).rstrip("_")
        raw[node_id] = f"{slug}__{node_id}" if slug and slug != plain else node_id
    ids = {node_id for node_id, _ in pairs}
    for node_id, _ in pairs:
        if raw[node_id] != node_id and raw[node_id] in ids:
            raw[node_id] = f"{raw[node_id]}_{_digest(node_id)}"
    by_raw = unique_aliases(raw.values())
    return {node_id: by_raw[raw[node_id]] for node_id, _ in pairs}


def job_name_for(workflow_name: str) -> str:
    """A job name from a workflow name: `Lead Scoring v2` → `lead_scoring_v2`."""
    return sanitize(workflow_name.lower())
