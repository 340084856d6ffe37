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


def test_the_group_wait_is_read_within_its_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOYALTY_GROUP_COMMIT_WAIT_MS", raising=False)
    assert Settings.from_env().group_wait_ms == 0
    monkeypatch.setenv("LOYALTY_GROUP_COMMIT_WAIT_MS", "2.5")
    assert Settings.from_env().group_wait_ms == 2.5
    for wrong in ("-1", "100.1", "soon"):
        monkeypatch.setenv("LOYALTY_GROUP_COMMIT_WAIT_MS", wrong)
        with pytest.raises(ValueError, match="LOYALTY_GROUP_COMMIT_WAIT_MS"):
            Settings.from_env()


def test_groups_are_written_on_the_loop_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOYALTY_GROUP_COMMIT_ON_LOOP", raising=False)
    assert Settings.from_env().group_commit_on_loop is True
    monkeypatch.setenv("LOYALTY_GROUP_COMMIT_ON_LOOP", "off")
    assert Settings.from_env().group_commit_on_loop is False
    monkeypatch.setenv("LOYALTY_GROUP_COMMIT_ON_LOOP", "maybe")
    with pytest.raises(ValueError, match="LOYALTY_GROUP_COMMIT_ON_LOOP"):
        Settings.from_env()
