"""The error tree: one root, and validation errors that list every problem."""

from __future__ import annotations

import inspect

from conveyor import errors


def test_every_error_derives_from_the_root() -> None:
    classes = [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, Exception) and c.__module__ == errors.__name__
    ]
    assert len(classes) > 10
    assert all(issubclass(c, errors.ConveyorError) for c in classes)


def test_every_error_class_is_drawn_in_the_module_docstring() -> None:
    doc = errors.__doc__ or ""
    classes = [
        n
        for n, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, Exception) and c.__module__ == errors.__name__
    ]
    missing = [n for n in classes if n not in doc]
    assert missing == []


def test_validation_error_lists_every_invalid_index() -> None:
    err = errors.ValidationError(
        [
            errors.Problem(3, "payload", "too large"),
            errors.Problem(0, "type", "bad name"),
            errors.Problem(3, "priority", "unknown"),
        ]
    )
    assert err.indexes == [0, 3]
    assert "item 0: type: bad name" in str(err)
    assert "item 3: payload: too large" in str(err)
