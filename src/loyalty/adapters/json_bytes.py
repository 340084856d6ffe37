"""JSON written by orjson, about a tenth of the standard library's time, with the standard
library's results: it takes what orjson refuses (integers beyond 64 bits, keys that aren't
strings, subclasses of str and int) and refuses what it always refused."""

from __future__ import annotations

import json
from typing import Any

import orjson

# Types orjson would write on its own but the standard library refuses: they stay refused.
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def json_bytes(value: Any) -> bytes:
    """``value`` as compact JSON in UTF-8, as ``json.dumps(value, ensure_ascii=False,
    separators=(",", ":"))`` writes it."""
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
