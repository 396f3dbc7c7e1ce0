"""The top-level package exports exactly its public API, sorted."""

from __future__ import annotations

import types

import conveyor


def test_all_is_sorted_and_names_exactly_the_public_non_module_members() -> None:
    public = sorted(
        name
        for name, value in vars(conveyor).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    )
    assert conveyor.__all__ == sorted(conveyor.__all__)
    assert conveyor.__all__ == public


def test_every_exported_name_has_a_docstring() -> None:
    missing = [name for name in conveyor.__all__ if not getattr(conveyor, name).__doc__]
    assert missing == []
