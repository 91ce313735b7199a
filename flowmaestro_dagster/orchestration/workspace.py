"""The Dagster workspace: examples, platform sensors, and the deployed-workflow shards."""

from pathlib import Path

EXAMPLES_LOCATION = "flowmaestro-examples"
PLATFORM_LOCATION = "flowmaestro-platform"
SHARD_LOCATION = "flowmaestro-workflows-{}"
MODULE = "flowmaestro_dagster.definitions"


GENERATED = "# Written by `flowmaestro dev` from FLOWMAESTRO_CODE_LOCATION_SHARDS; edits are lost."


def render_workspace(shards: int, header: str = GENERATED, *, examples: bool = True) -> str:
    entries = [(EXAMPLES_LOCATION, "defs")] if examples else []
    entries += [(PLATFORM_LOCATION, "platform_defs")]
    entries += [(SHARD_LOCATION.format(i), f"shard_{i}") for i in range(shards)]
    lines = [header, "load_from:"]
    for location, attribute in entries:
        lines += [
            "  - python_module:",
            f"      module_name: {MODULE}",
            f"      attribute: {attribute}",
            f"      location_name: {location}",
        ]
    return "\n".join(lines) + "\n"


def write_workspace(path: Path, shards: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_workspace(shards))
    return path
