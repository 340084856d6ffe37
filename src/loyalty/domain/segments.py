"""Segments: named groups of members that a program declares once, as a condition over the
member (attributes, tier, plans, enrolment date, birthday...), and reuses by name, today in
the reward catalog's eligibility. Pure: the condition is CEL source the application
evaluates; membership of a segment is never stored, it is what the condition says now."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Segment:
    segment_id: str
    name: str
    condition: str
    """A CEL condition over ``member`` and ``now``."""
    description: str | None = None
