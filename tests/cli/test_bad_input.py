"""Every wrong input to the command line ends with exit code 2 and one line that says what to
fix: never a traceback, never a secret."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from orchestrator.demo.local_redis import free_port
from tests.cli.conftest import Cli

pytestmark = pytest.mark.system

DEEP = "[" * 10_000 + "]" * 10_000


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "binary.json").write_bytes(b'{"room": "\xff\xfe"}')
    (tmp_path / "text-metadata.json").write_text('{"room": "r", "metadata": "a string"}')
    (tmp_path / "number-metadata.json").write_text('{"room": "r", "metadata": 7}')
    (tmp_path / "deep.json").write_text('{"room": "r", "metadata": {"x": ' + DEEP + "}}")
    return {"dir": str(tmp_path), **{p.stem: str(p) for p in tmp_path.iterdir()}}


# (arguments, environment, what the one line must say)
CASES: dict[str, tuple[list[str], dict[str, str], str]] = {
    "metadata nested deep": (["dispatch", "--room", "r", "--metadata", DEEP], {}, "--metadata"),
    "event file missing": (["dispatch", "--event", "{dir}/nope.json"], {}, "cannot read it"),
    "event file a folder": (["dispatch", "--event", "{dir}"], {}, "cannot read it"),
    "event file not UTF-8": (["dispatch", "--event", "{binary}"], {}, "is not UTF-8 text"),
    "event metadata a string": (
        ["dispatch", "--event", "{text-metadata}"], {}, "metadata must be a JSON object"
    ),
    "event metadata a number": (
        ["dispatch", "--event", "{number-metadata}"], {}, "metadata must be a JSON object"
    ),
    "event nested deep": (["dispatch", "--event", "{deep}"], {}, "nested too deep"),
    "expiry 1e308": (["dispatch", "--room", "r", "--expires-in-s", "1e308"], {}, "--expires-in-s"),
    "delay nan": (["dispatch", "--room", "r", "--delay-s", "nan"], {}, "--delay-s nan"),
    "delay far in the past": (
        ["dispatch", "--room", "r", "--delay-s", "-2000000000"], {}, "--delay-s"
    ),
    "waiting less than the delay": (
        ["dispatch", "--room", "r", "--delay-s", "60", "--wait-s", "1"], {}, "no outcome yet"
    ),
    "since with 400 digits": (["sessions", "--since", "9" * 400 + "s"], {}, "--since"),
    "count -1": (["results", "--count", "-1"], {}, "--count"),
    "end an empty room": (["end", "--room", ""], {}, "--room: Value error, must not be empty"),
    "REDIS_URL not a URL": (["sessions"], {"REDIS_URL": "not-a-url"}, "is not a Redis URL"),
    "REDIS_URL with a password, unreachable": (
        ["sessions"], {"REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"}, "cannot reach Redis"
    ),
    "serve without Redis": (
        ["serve", "--port", "0"], {"REDIS_URL": "redis://127.0.0.1:1/0"}, "cannot reach Redis"
    ),
    "serve on port 99999": (["serve", "--port", "99999"], {}, "99999 is not a port"),
    "replay garbage": (["dead-letters", "replay", "garbage"], {}, "not an entry id"),
    "replay past 64 bits": (
        ["dead-letters", "replay", "18446744073709551616-0"], {}, "not an entry id"
    ),
    "token for an empty identity": (
        ["token", "--room", "r", "--identity", ""], {}, "--identity: String should have at least"
    ),
    "token attribute without a value": (
        ["token", "--room", "r", "--identity", "i", "--attribute", "tier"], {}, "use NAME=VALUE"
    ),
    "token for 5 seconds": (
        ["token", "--room", "r", "--identity", "i", "--ttl-s", "5"], {}, "--ttl-s"
    ),
    "token for a room with a control byte": (
        ["token", "--room", "a\x01b", "--identity", "i"], {}, "--room: must not contain control"
    ),
    "token without LiveKit's secret": (
        ["token", "--room", "r", "--identity", "i"], {"LIVEKIT_API_SECRET": ""},
        "LIVEKIT_API_SECRET",
    ),
}  # fmt: skip


def said(err: str) -> list[str]:
    """What the command said to the person, apart from its log lines (JSON, as every line of
    a log is: checked here)."""
    lines = err.strip().splitlines()
    for line in lines:
        if line.startswith("{"):
            json.loads(line)
    return [line for line in lines if not line.startswith("{")]


@pytest.mark.parametrize("case", list(CASES))
async def test_a_wrong_input_is_one_line_and_exit_2(
    cli: Cli, files: dict[str, str], case: str
) -> None:
    args, env, says = CASES[case]
    ran = await cli(*(a.format(**files) for a in args), **env)
    assert ran.code == 2, (ran.out, ran.err)
    lines = said(ran.err)
    assert len(lines) == 1, ran.err
    assert says in lines[0], lines[0]
    assert "Traceback" not in ran.err + ran.out
    assert "hunter2" not in ran.err + ran.out


async def test_serve_on_a_port_in_use_says_so(cli: Cli) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        ran = await cli("serve", "--host", "127.0.0.1", "--port", str(port))
    assert ran.code == 2, ran.err
    [line] = said(ran.err)
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert "in use" in line
