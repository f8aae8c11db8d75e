"""The suite's own scheduling list (conftest ``LONGEST_MODULES``) names modules that exist,
so a renamed module cannot drop out of the longest-first order unnoticed."""

from __future__ import annotations

from conftest import LONGEST_MODULES, REPO_ROOT


def test_longest_modules_exist_and_are_listed_once() -> None:
    assert [name for name in LONGEST_MODULES if not (REPO_ROOT / name).is_file()] == []
    assert len(set(LONGEST_MODULES)) == len(LONGEST_MODULES)
