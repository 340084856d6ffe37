"""Settings read from the environment."""

from __future__ import annotations

import pytest

from loyalty.bootstrap import Settings


def test_group_commit_is_on_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOYALTY_GROUP_COMMIT", raising=False)
    assert Settings.from_env().group_commit is True
    monkeypatch.setenv("LOYALTY_GROUP_COMMIT", "off")
    assert Settings.from_env().group_commit is False
    monkeypatch.setenv("LOYALTY_GROUP_COMMIT", " ON ")
    assert Settings.from_env().group_commit is True


def test_a_group_commit_setting_that_is_neither_on_nor_off_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOYALTY_GROUP_COMMIT", "sometimes")
    with pytest.raises(ValueError, match="LOYALTY_GROUP_COMMIT"):
        Settings.from_env()
