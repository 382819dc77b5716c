"""The quick loop cannot silently lose or gain a module: a test module without exactly one
category marker stops the run at collection, naming the module."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    """A scratch project with the suite's own conftest.py."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(CONFTEST)
    return pytester


@pytest.mark.parametrize(
    ("mark", "named"),
    [
        ("", "test_plain.py: none"),
        ("[pytest.mark.unit, pytest.mark.system]", "test_plain.py: ['unit', 'system']"),
    ],
)
def test_a_module_without_one_category_stops_the_run(
    pytester: pytest.Pytester, mark: str, named: str
) -> None:
    marked = f"pytestmark = {mark}\n" if mark else ""
    pytester.makepyfile(test_plain=f"import pytest\n{marked}\ndef test_x():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert named in result.stderr.str()


def test_a_module_with_its_category_runs_and_is_selectable(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_quick="import pytest\npytestmark = pytest.mark.unit\ndef test_x():\n    pass\n",
        test_slow="import pytest\npytestmark = pytest.mark.system\ndef test_y():\n    pass\n",
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-m", "unit or integration")
    result.assert_outcomes(passed=1, deselected=1)
