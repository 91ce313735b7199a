"""One duration parser: wait units and checkpoint expiries share its table."""

import pytest

from flowmaestro_dagster.spec.configs import expiry_seconds
from flowmaestro_dagster.spec.durations import (
    canonical_unit,
    parse_duration_seconds,
    to_milliseconds,
)


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("m", "minutes"), ("MIN", "minutes"), ("sec", "seconds"), ("d", "days"), ("ms", "ms")],
)
def test_unit_aliases_share_one_canonical_name(alias: str, canonical: str) -> None:
    assert canonical_unit(alias) == canonical


def test_unknown_units_are_refused() -> None:
    assert canonical_unit("fortnight") is None
    with pytest.raises(ValueError, match="fortnight"):
        to_milliseconds(1, "fortnight")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("1h", 3600), ("7d", 604_800), ("90 seconds", 90), ("1.5h", 5400)],
)
def test_text_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration_seconds(text) == seconds


def test_checkpoint_expiry_uses_the_same_parser_and_keeps_its_bounds() -> None:
    assert expiry_seconds("24h") == 86_400
    with pytest.raises(ValueError, match="between 1m and 90d"):
        expiry_seconds("100d")
    with pytest.raises(ValueError, match="such as 1h"):
        expiry_seconds("soon")
