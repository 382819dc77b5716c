"""The README cannot drift from the code: its configuration table lists exactly the variables
the settings classes read, with their defaults; the Redis names it documents are the ones in
`tasks.keys`; the dispatch outcomes it lists are `tasks.models.DispatchOutcome`; its command
table covers every command of the command line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest

from orchestrator.cli.app import build_parser
from tasks import keys
from tasks.models import DispatchOutcome
from tasks.producer import ENQUEUE_SCRIPT
from tests.support.settings_env import variables

pytestmark = pytest.mark.unit

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip("|"))])
    return rows


def test_configuration_table_matches_the_settings_classes() -> None:
    documented = {row[0].strip("`"): row for row in table_rows(section("Configuration"))}
    expected = variables()
    missing = sorted(set(expected) - set(documented))
    unknown = sorted(set(documented) - set(expected))
    assert not missing, f"variables the code reads but the README does not list: {missing}"
    assert not unknown, f"variables the README lists but no setting reads: {unknown}"
    for name, var in expected.items():
        _, default, read_by, meaning = documented[name]
        assert default.strip("`") == var.default, f"{name}: README says {default}"
        assert set(read_by.split(", ")) == set(var.read_by), f"{name}: read by {read_by}"
        assert meaning, f"{name} has no meaning in the README"


def test_documented_redis_names_are_the_codes() -> None:
    producing = section("Producing events")
    assert f"`{keys.dispatch_job_id('<event_id>')}`" in producing
    assert f"```lua\n{ENQUEUE_SCRIPT}```" in producing  # the very script producers run
    assert f'"{keys.QUEUE_NAME}"' in producing
    assert f'"f": "{keys.DISPATCH_AGENT}"' in producing
    assert f"`{keys.RESULTS_STREAM}`" in section("Consuming results")
    assert f"`{keys.DEAD_LETTER_STREAM}`" in section("Dead letters")


def test_every_command_is_documented() -> None:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    commands = set(subparsers.choices)  # type: ignore[arg-type]
    documented = {row[0].strip("`").split()[0] for row in table_rows(section("The command line"))}
    assert commands == documented


def test_the_documented_dispatch_outcomes_are_the_codes() -> None:
    producing = section("Producing events")
    start = producing.index("The outcome (the job's result) is one of")
    paragraph = producing[start : producing.index("\n\n", start)]
    without_asides = re.sub(r"\([^)]*\)", "", paragraph)
    documented = re.findall(r"`([a-z_]+)`", without_asides)
    assert sorted(documented) == sorted(get_args(DispatchOutcome))
