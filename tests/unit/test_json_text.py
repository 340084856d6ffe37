"""What JSON columns and answers are written as: the same values the standard library would
write, in fewer bytes, and the same refusals; an answer's bytes are those Starlette's
``JSONResponse`` would send."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pytest
from starlette.responses import JSONResponse

from loyalty.adapters.db.engine import json_text
from loyalty.adapters.json_bytes import json_bytes


class Kind(StrEnum):
    EARN = "earn"


VALUES = pytest.mark.parametrize(
    "value",
    [
        {"points": 193, "lines": [{"sku": "A", "base_minor": 2_189}], "tier": None},
        {"name": 'café ☕ "quoted" \\ \n', "ok": True, "rate": 1.5, "empty": {}},
        {"big": 10**30, "negative": -(10**25)},  # beyond 64 bits
        {1: "a", 2: "b"},  # keys that aren't strings
        {"kind": Kind.EARN, "kinds": [Kind.EARN]},  # a subclass of str
        [2**63 - 1, -(2**63)],
    ],
)


@VALUES
def test_reads_back_as_the_standard_library_would_write_it(value: Any) -> None:
    text = json_text(value)
    assert json.loads(text) == json.loads(json.dumps(value))
    assert len(text) <= len(json.dumps(value))


@VALUES
def test_an_answer_is_what_starlette_would_send(value: Any) -> None:
    assert json_bytes(value) == JSONResponse(value).body


@pytest.mark.parametrize("value", [datetime(2026, 1, 1, tzinfo=UTC), {"at": {1, 2}}])
def test_refuses_what_the_standard_library_refuses(value: Any) -> None:
    with pytest.raises(TypeError):
        json.dumps(value)
    with pytest.raises(TypeError):
        json_text(value)
    with pytest.raises(TypeError):
        json_bytes(value)
