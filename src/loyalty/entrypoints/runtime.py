"""Process-wide settings of a long-running engine process (the server, an import, a job).

Python's cyclic garbage collector walks every tracked object of the generations it collects.
Once the application is loaded, that is several hundred thousand objects (SQLAlchemy, pydantic
and FastAPI's own structures) that live as long as the process, and a batch of 1,000
purchases allocates enough new objects to set off a full collection several times: measured,
a third of a batch's time went to walking the same long-lived objects again
(``python -m bench.batch_profile``; docs/performance.md, "The garbage collector").

``settle_heap`` is called once the process has loaded what it keeps: it collects what loading
left behind, moves every surviving object out of the collector's sight for good (``gc.freeze``;
they are still freed by reference counting if they are ever released), and lets more
allocations pass before a young collection. Nothing else changes: reference counting frees
almost every object of a request the moment it is done with.
"""

from __future__ import annotations

import gc

GC_YOUNG_THRESHOLD = 10_000
"""Allocations between two young collections (Python's default is 700)."""


def settle_heap() -> None:
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)
