"""The program document: the versioned, merchant-owned description of a program.

It is a JSON (or YAML) document validated by this schema. Changing it makes a new version;
every ledger entry records the version it was computed under. Rules, tiers and campaigns are
added here as new optional sections, so documents written today stay valid.
"""

from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loyalty.domain.points import Rounding
from loyalty.domain.program import (
    EarnRate,
    Expiry,
    ExpiryPolicy,
    NegativeBalancePolicy,
    ProgramSettings,
)

EARN_POINTS_MAX = 1_000
PER_SPEND_MINOR_MAX = 1_000_000
EXPIRY_DAYS_MAX = 36_500


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EarnRateDocument(_Strict):
    """How spend converts to points: ``points`` for every ``per_spend_minor`` of eligible spend
    (after line discounts), rounded once per order by ``rounding``."""

    points: Annotated[int, Field(ge=0, le=EARN_POINTS_MAX)] = 1
    per_spend_minor: Annotated[int, Field(ge=1, le=PER_SPEND_MINOR_MAX)] = 100
    rounding: Rounding = Rounding.FLOOR


class ExpiryDocument(_Strict):
    """``never``, or ``after_days``: each lot expires ``days`` days after it was earned."""

    policy: ExpiryPolicy = ExpiryPolicy.NEVER
    days: Annotated[int, Field(ge=1, le=EXPIRY_DAYS_MAX)] | None = None

    @model_validator(mode="after")
    def _days_match_policy(self) -> ExpiryDocument:
        if self.policy is ExpiryPolicy.AFTER_DAYS and self.days is None:
            raise ValueError("'days' is required when policy is 'after_days'")
        if self.policy is ExpiryPolicy.NEVER and self.days is not None:
            raise ValueError("'days' must be omitted when policy is 'never'")
        return self


class PointsWalletDocument(_Strict):
    earn: EarnRateDocument = Field(default_factory=EarnRateDocument)
    expiry: ExpiryDocument = Field(default_factory=ExpiryDocument)
    negative_balance: NegativeBalancePolicy = NegativeBalancePolicy.ALLOW_DEBT


class EnrollmentDocument(_Strict):
    auto_enroll_on_purchase: bool = False


class ProgramDocument(_Strict):
    """A program definition, version 1 of the schema."""

    schema_version: Literal[1] = 1
    name: Annotated[str, Field(min_length=1, max_length=200)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    time_zone: Annotated[str, Field(max_length=64)] = "UTC"
    points: PointsWalletDocument = Field(default_factory=PointsWalletDocument)
    enrollment: EnrollmentDocument = Field(default_factory=EnrollmentDocument)

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


def settings_from_document(document: ProgramDocument, *, version: int) -> ProgramSettings:
    wallet = document.points
    return ProgramSettings(
        currency=document.currency,
        earn=EarnRate(
            points=wallet.earn.points,
            per_spend_minor=wallet.earn.per_spend_minor,
            rounding=wallet.earn.rounding,
        ),
        expiry=Expiry(policy=wallet.expiry.policy, days=wallet.expiry.days),
        negative_balance=wallet.negative_balance,
        auto_enroll=document.enrollment.auto_enroll_on_purchase,
        version=version,
    )
