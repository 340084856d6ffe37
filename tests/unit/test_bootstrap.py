"""Settings read from the environment."""

from __future__ import annotations

import pytest

from loyalty.bootstrap import Settings


@pytest.mark.parametrize(
    ("variable", "setting"),
    [
        ("LOYALTY_GROUP_COMMIT", "group_commit"),
        ("LOYALTY_GROUP_COMMIT_ON_LOOP", "group_commit_on_loop"),
    ],
)
def test_a_switch_is_on_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch, variable: str, setting: str
) -> None:
    monkeypatch.delenv(variable, raising=False)
    assert getattr(Settings.from_env(), setting) is True
    monkeypatch.setenv(variable, "off")
    assert getattr(Settings.from_env(), setting) is False
    monkeypatch.setenv(variable, " ON ")
    assert getattr(Settings.from_env(), setting) is True


@pytest.mark.parametrize("variable", ["LOYALTY_GROUP_COMMIT", "LOYALTY_GROUP_COMMIT_ON_LOOP"])
def test_a_switch_that_is_neither_on_nor_off_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "sometimes")
    with pytest.raises(ValueError, match=variable):
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


def test_the_lock_timeout_is_read_within_its_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOYALTY_LOCK_TIMEOUT_MS", raising=False)
    assert Settings.from_env().lock_timeout_ms == 2_000
    monkeypatch.setenv("LOYALTY_LOCK_TIMEOUT_MS", "0")
    assert Settings.from_env().lock_timeout_ms == 0
    monkeypatch.setenv("LOYALTY_LOCK_TIMEOUT_MS", "600000")
    assert Settings.from_env().lock_timeout_ms == 600_000
    for wrong in ("-1", "600001", "2.5", "soon", ""):
        monkeypatch.setenv("LOYALTY_LOCK_TIMEOUT_MS", wrong)
        with pytest.raises(ValueError, match="LOYALTY_LOCK_TIMEOUT_MS"):
            Settings.from_env()
