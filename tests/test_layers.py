"""The layering holds: each part imports only the parts below it (module-level and function-level
imports alike). The orchestrator and the agent meet only through `tasks` and Redis; product code
never imports the stand-in server; nothing of the product imports the demo."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
OURS = ("tasks", "orchestrator", "agent", "livekit_sim")

# Each part, and the parts it may import (besides itself). `orchestrator` alone is its package
# face (`WorkerSettings`, built lazily), which only `__main__` and the CLI reach.
MAY_IMPORT: dict[str, set[str]] = {
    "tasks": set(),
    "agent": {"tasks"},
    "livekit_sim": set(),
    "orchestrator.errors": {"tasks"},
    "orchestrator.logs": {"tasks"},
    "orchestrator.metrics": {"tasks"},
    "orchestrator.settings": {"orchestrator.errors", "tasks"},
    "orchestrator.store": {"orchestrator.errors", "orchestrator.metrics", "tasks"},
    "orchestrator.gateway": {
        "orchestrator.errors", "orchestrator.metrics", "orchestrator.settings", "tasks",
    },
    "orchestrator.jobs": {
        "orchestrator.store", "orchestrator.gateway", "orchestrator.errors",
        "orchestrator.metrics", "orchestrator.settings", "tasks",
    },
    "orchestrator.worker": {
        "orchestrator.jobs", "orchestrator.store", "orchestrator.gateway", "orchestrator.errors",
        "orchestrator.metrics", "orchestrator.settings", "orchestrator.logs", "tasks",
    },
    "orchestrator.http": {
        "orchestrator.store", "orchestrator.gateway", "orchestrator.errors", "orchestrator.metrics",
        "orchestrator.settings", "orchestrator.logs", "tasks",
    },
    "orchestrator.doctor": {
        "orchestrator.gateway", "orchestrator.store", "orchestrator.errors",
        "orchestrator.settings", "tasks",
    },
    "orchestrator": {"orchestrator.worker"},
    "orchestrator.__main__": {"orchestrator.cli"},
    "orchestrator.cli": {
        "orchestrator.http", "orchestrator.doctor", "orchestrator.demo", "orchestrator.store",
        "orchestrator.gateway",
        "orchestrator.errors", "orchestrator.settings", "orchestrator.logs", "tasks",
    },
    "orchestrator.demo": {
        "orchestrator.cli", "orchestrator.store", "orchestrator.errors", "orchestrator.settings",
        "tasks",
    },
}  # fmt: skip


def part(module: str) -> str:
    """The part a module belongs to: a top-level package, or a folder or module directly under
    `orchestrator/`."""
    names = module.split(".")
    if names[0] != "orchestrator" or len(names) == 1:
        return names[0]
    return ".".join(names[:2])


def modules() -> Iterator[tuple[str, Path]]:
    for top in OURS:
        for path in sorted((ROOT / top).rglob("*.py")):
            names = list(path.relative_to(ROOT).with_suffix("").parts)
            if names[-1] == "__init__":
                names.pop()
            yield ".".join(names), path


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """Every module of ours that `path` imports, with its line; `from package import name`
    counts as importing `package.name` when that is a module."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [
                f"{node.module}.{alias.name}" if _is_module(f"{node.module}.{alias.name}")
                else node.module
                for alias in node.names
            ]  # fmt: skip
        else:
            continue
        for target in targets:
            if target.split(".")[0] in OURS:
                yield node.lineno, target


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def test_every_part_has_its_place_in_the_layering() -> None:
    unplaced = {part(module) for module, _ in modules()} - MAY_IMPORT.keys()
    assert not unplaced, f"parts with no row in MAY_IMPORT: {sorted(unplaced)}"


def test_each_part_imports_only_the_parts_below_it() -> None:
    wrong = []
    for module, path in modules():
        mine = part(module)
        for line, target in imported(path):
            theirs = part(target)
            if theirs != mine and theirs not in MAY_IMPORT[mine]:
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line} imports {target} ({mine} → {theirs})"
                )
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_scan_sees_an_import_against_the_layering(tmp_path: Path) -> None:
    """The scan reads function-level imports and `from package import module` too."""
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from orchestrator import demo\n    import agent.session\n"
        "from orchestrator.jobs import dispatch\n"
    )
    found = sorted(target for _, target in imported(source))
    assert found == ["agent.session", "orchestrator.demo", "orchestrator.jobs.dispatch"]
    assert part("orchestrator.jobs.dispatch") == "orchestrator.jobs"
    assert "orchestrator.demo" not in MAY_IMPORT["orchestrator.jobs"]
