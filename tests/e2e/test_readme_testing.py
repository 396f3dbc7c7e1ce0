"""README's "Testing your handlers" runs as written: its config and test file, in a new project."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_section() -> str:
    text = README.read_text()
    start = text.index("## Testing your handlers\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def test_the_section_holds_one_config_and_one_test_file() -> None:
    section = readme_section()
    assert len(blocks(section, "toml")) == 1
    assert len(blocks(section, "python")) == 1
    assert "`test_invoices.py`:" in section


def test_the_readme_example_passes_in_both_modes(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    kafka_bootstrap: str,
    database_url: str,
    schema_registry_url: str,
) -> None:
    """Both example tests pass: in process (10 minutes skipped) and on the real stack."""
    section = readme_section()
    [config] = blocks(section, "toml")
    [test_file] = blocks(section, "python")
    pytester.makepyprojecttoml(config)
    pytester.makepyfile(test_invoices=test_file)
    monkeypatch.delenv("CONVEYOR_TEST_BROKER", raising=False)
    monkeypatch.setenv("CONVEYOR_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", database_url)
    monkeypatch.setenv("CONVEYOR_SCHEMA_REGISTRY_URL", schema_registry_url)
    result = pytester.runpytest_subprocess("-W", "error", timeout=300)
    result.assert_outcomes(passed=2)
