"""The environment variables the code reads, derived from the settings classes themselves, so
the README's configuration table and docker-compose.yml can be checked against them."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import AliasChoices, SecretStr
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from agent.settings import AgentSettings
from orchestrator.settings import ClientSettings, Settings


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    """As the README shows it: `required`, `(unset)`, or the value."""
    required: bool
    read_by: frozenset[str]


def _env_name(cls: type[BaseSettings], field: str) -> str:
    alias = cls.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        assert isinstance(first, str)
        return first
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def _shown(value: object) -> str:
    if value is PydanticUndefined:
        return "required"
    if value is None or value == "":
        return "(unset)"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


SOURCES: dict[str, type[BaseSettings]] = {
    "orchestrator": Settings,
    "agent": AgentSettings,
    "cli": ClientSettings,
}


def variables() -> dict[str, Variable]:
    """Every variable, by name; a variable several parts read appears once, with all of them.
    Its default is the orchestrator's where parts differ (the CLI's are all optional)."""
    found: dict[str, Variable] = {}
    for part, cls in SOURCES.items():
        for field, info in cls.model_fields.items():
            name = _env_name(cls, field)
            required = info.default is PydanticUndefined and info.default_factory is None
            default = _shown(info.default)
            if name in found:
                old = found[name]
                found[name] = Variable(name, old.default, old.required, old.read_by | {part})
            else:
                found[name] = Variable(name, default, required, frozenset({part}))
    return found


def known_names(*parts: str) -> set[str]:
    return {v.name for v in variables().values() if v.read_by & set(parts)}
