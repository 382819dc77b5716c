"""docker-compose.yml agrees with the code: the services and their commands, every variable a
setting the code reads, the required ones given, and LiveKit's webhook pointed at our HTTP
service with a key it can verify. No container engine runs here: the file is parsed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from agent.settings import load_settings as load_agent_settings
from orchestrator.http.app import routes
from orchestrator.settings import load_settings
from tests.support.settings_env import known_names, variables

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = {
    "orchestrator-worker": ["arq", "orchestrator.WorkerSettings"],
    "agent": ["python", "-m", "agent", "start"],
    "orchestrator-http": ["python", "-m", "orchestrator", "serve"],
}
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def resolved(value: object) -> str:
    """A compose value with `${VAR:-default}` replaced by its default (nothing is set)."""
    return _INTERPOLATION.sub(lambda m: m[2] or "", str(value))


def env_of(service: str) -> dict[str, str]:
    return {k: resolved(v) for k, v in (SERVICES[service].get("environment") or {}).items()}


def test_the_services_and_their_commands() -> None:
    assert set(SERVICES) == {"redis", "livekit", *OURS}
    for name, command in OURS.items():
        assert SERVICES[name]["command"] == command
        assert SERVICES[name]["build"] == "."
    assert SERVICES["orchestrator-worker"]["deploy"]["replicas"] == 2
    assert (REPO / "Dockerfile").is_file()


def test_redis_persists_with_aof() -> None:
    redis = SERVICES["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])


@pytest.mark.parametrize("service", sorted(OURS))
def test_every_variable_is_a_setting_the_code_reads(service: str) -> None:
    part = "agent" if service == "agent" else "orchestrator"
    unknown = set(env_of(service)) - known_names(part)
    assert not unknown, f"{service} sets variables no setting reads: {sorted(unknown)}"


@pytest.mark.parametrize("service", ["orchestrator-worker", "orchestrator-http"])
def test_orchestrator_services_get_valid_settings(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    required = {v.name for v in variables().values() if v.required}
    env = env_of(service)
    assert required <= set(env), f"{service} lacks {sorted(required - set(env))}"
    _only_env(monkeypatch, env)
    settings = load_settings()  # raises ConfigError naming a bad value
    assert urlsplit(settings.redis_url).hostname == "redis"
    assert urlsplit(settings.livekit_url).hostname == "livekit"


def test_the_agent_gets_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_of("agent")
    _only_env(monkeypatch, env)
    settings = load_agent_settings()
    assert settings.livekit_url
    assert urlsplit(settings.livekit_url).hostname == "livekit"
    assert settings.livekit_api_key
    assert settings.livekit_api_secret is not None
    assert urlsplit(settings.redis_url).hostname == "redis"


def test_worker_agent_and_http_agree_on_names_and_keys() -> None:
    envs = [env_of(s) for s in OURS]
    for name in ("AGENT_NAME", "REDIS_URL", "LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        assert len({e[name] for e in envs}) == 1, name
    keys = resolved(SERVICES["livekit"]["environment"]["LIVEKIT_KEYS"])
    key, _, secret = keys.partition(":")
    assert (key.strip(), secret.strip()) == (
        envs[0]["LIVEKIT_API_KEY"],
        envs[0]["LIVEKIT_API_SECRET"],
    )
    assert len(secret.strip()) >= 32  # shorter secrets draw warnings from LiveKit and PyJWT


def test_livekit_runs_in_dev_mode_with_its_webhook_on_our_service() -> None:
    livekit = SERVICES["livekit"]
    assert livekit["image"].startswith("livekit/livekit-server:v")  # pinned, not latest
    assert "--dev" in livekit["command"]
    config_arg = livekit["command"][livekit["command"].index("--config") + 1]
    [mount] = [v for v in livekit["volumes"] if v.split(":")[1] == config_arg]
    config = yaml.safe_load((REPO / mount.split(":")[0]).read_text())

    http_env = env_of("orchestrator-http")
    webhook_paths = {r.path for r in routes() if "webhook" in r.path}
    [url] = config["webhook"]["urls"]
    parts = urlsplit(url)
    assert parts.hostname == "orchestrator-http"
    assert parts.port == int(http_env["LKD_HTTP_PORT"])
    assert parts.path in webhook_paths
    assert config["webhook"]["api_key"] == http_env["LIVEKIT_API_KEY"]
    assert (
        f"{http_env['LKD_HTTP_PORT']}:{http_env['LKD_HTTP_PORT']}"
        in SERVICES["orchestrator-http"]["ports"]
    )
    assert http_env["LKD_HTTP_HOST"] == "0.0.0.0"  # reachable from the livekit container


def _only_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in known_names("orchestrator", "agent", "cli"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
