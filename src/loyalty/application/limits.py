"""Every maximum the engine enforces, in one place (documented in ``docs/limits.md``)."""

from __future__ import annotations

import json
from typing import Any

REQUEST_BODY_BYTES_MAX = 1_048_576
"""Largest request body the API reads; past it, ``413 payload_too_large``."""

LINES_PER_EVENT_MAX = 500
QUANTITY_MAX = 100_000
MONEY_MINOR_MAX = 10**13
"""Any money amount, in minor units (100 billion in a two-decimal currency)."""

POINTS_PER_REQUEST_MAX = 10**12
ATTRIBUTES_KEYS_MAX = 50
ATTRIBUTES_BYTES_MAX = 8_192
REASON_LENGTH_MAX = 500
REFERENCE_LENGTH_MAX = 128
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 200
IMPORT_BATCH_DEFAULT = 500
IMPORT_BATCH_MAX = 5_000
BATCH_EVENTS_MAX = 1_000
"""Events in one ``POST .../events:batch`` (the body limit applies too)."""
EVENT_GROUP_SIZE_MAX = 64
"""Concurrent single purchases recorded in one transaction (group commit); more wait for the
next group."""
EVENT_GROUP_WAIT_MS = 0.0
"""How long a group's leader waits for more purchases to join before recording; 0: it takes
what is queued when it starts."""
EVENT_GROUP_WAIT_MS_MAX = 100.0
"""The most ``LOYALTY_GROUP_COMMIT_WAIT_MS`` may set it to."""


def attributes_size(value: dict[str, Any]) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())
