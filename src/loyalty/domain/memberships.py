"""Paid membership: plans with a fee and a period, trials, renewals, cancellation at period
end, and lapsing when a period ends unpaid. The engine records what the merchant's payment
system reports; it takes no payments. Pure: dates are passed in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from loyalty.domain.tiers import add_months


class PlanPeriod(StrEnum):
    MONTH = "month"
    YEAR = "year"


class MembershipStatus(StrEnum):
    TRIAL = "trial"
    ACTIVE = "active"
    CANCELLED = "cancelled"
    """Cancelled by the member: benefits last until the paid period ends."""
    ENDED = "ended"
    """A cancelled membership past its period end."""
    LAPSED = "lapsed"
    """The period ended without a renewal payment."""


@dataclass(frozen=True, slots=True)
class Plan:
    plan_id: str
    name: str
    fee_minor: int
    period: PlanPeriod
    trial_days: int = 0
    grants_tier: str | None = None
    perks: tuple[str, ...] = ()


def period_after(plan: Plan, start: datetime) -> datetime:
    return add_months(start, 1 if plan.period is PlanPeriod.MONTH else 12)


def trial_end(plan: Plan, start: datetime) -> datetime:
    return start + timedelta(days=plan.trial_days)


def status_at(
    *, in_trial: bool, cancelled: bool, period_end: datetime, now: datetime
) -> MembershipStatus:
    """A membership's status at ``now``: benefits hold until ``period_end`` whatever
    happened; after it, cancelled memberships have ended and unpaid ones lapsed."""
    if now < period_end:
        if cancelled:
            return MembershipStatus.CANCELLED
        return MembershipStatus.TRIAL if in_trial else MembershipStatus.ACTIVE
    return MembershipStatus.ENDED if cancelled else MembershipStatus.LAPSED


def grants_benefits(status: MembershipStatus) -> bool:
    return status in (MembershipStatus.TRIAL, MembershipStatus.ACTIVE, MembershipStatus.CANCELLED)
