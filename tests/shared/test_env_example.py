"""`.env.example` documents exactly the settings the services read."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic_settings import BaseSettings

from click_gateway.settings import GatewaySettings
from postback_dispatcher.settings import DispatcherSettings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
CLI_ONLY = {"DISPATCHER_URL"}  # read by the operator CLI, not by a service


def aliases(settings_class: type[BaseSettings]) -> set[str]:
    return {str(field.alias) for field in settings_class.model_fields.values() if field.alias}


def documented() -> set[str]:
    text = ENV_EXAMPLE.read_text()
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def test_every_setting_is_documented() -> None:
    missing = (aliases(GatewaySettings) | aliases(DispatcherSettings)) - documented()
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_every_documented_variable_is_read_by_something() -> None:
    unknown = documented() - aliases(GatewaySettings) - aliases(DispatcherSettings) - CLI_ONLY
    assert not unknown, f"not read by any service: {sorted(unknown)}"
