"""Every top-level API / platform setting is documented in .env.example (the configuration
reference the README points to)."""

from pathlib import Path

from flowmaestro_api.settings import ApiSettings

ROOT = Path(__file__).resolve().parents[1]


def test_every_api_setting_is_in_env_example() -> None:
    documented = (ROOT / ".env.example").read_text()
    missing = [
        name for name in ApiSettings.model_fields if f"FLOWMAESTRO_{name.upper()}" not in documented
    ]
    assert missing == []
