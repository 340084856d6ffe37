"""The program document: the versioned, merchant-owned description of a program.

It is a JSON (or YAML) document validated by this schema. Changing it makes a new version;
every ledger entry records the version it was computed under. Rules, tiers and campaigns are
added here as new optional sections, so documents written today stay valid.
"""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    field_validator,
    model_validator,
)

from loyalty.domain.cashback import CashbackPolicy, CheckoutRules, PaymentRule
from loyalty.domain.catalog import Reward, RewardType
from loyalty.domain.discounts import DiscountPolicy, SpendBracket
from loyalty.domain.memberships import Plan, PlanPeriod
from loyalty.domain.points import Rounding
from loyalty.domain.program import (
    EarnRate,
    Expiry,
    ExpiryPolicy,
    NegativeBalancePolicy,
    PointValue,
    ProgramSettings,
    TransferRules,
)
from loyalty.domain.rules import (
    BASE_RULE_ID,
    Budget,
    Conditions,
    Effect,
    EffectKind,
    ItemFilter,
    MemberCap,
    Period,
    Rule,
    Trigger,
)
from loyalty.domain.segments import Segment
from loyalty.domain.stamps import StampCard, StampPer
from loyalty.domain.tiers import Tier, TierMetric, TierSet, Window, WindowKind

EARN_POINTS_MAX = 1_000
PER_SPEND_MINOR_MAX = 1_000_000
EXPIRY_DAYS_MAX = 36_500
PENDING_DAYS_MAX = 365


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EarnRateDocument(_Strict):
    """How spend converts to points: ``points`` for every ``per_spend_minor`` of eligible spend
    (after line discounts), rounded once per order by ``rounding``."""

    points: Annotated[StrictInt, Field(ge=0, le=EARN_POINTS_MAX)] = 1
    per_spend_minor: Annotated[StrictInt, Field(ge=1, le=PER_SPEND_MINOR_MAX)] = 100
    rounding: Rounding = Rounding.FLOOR


class ExpiryDocument(_Strict):
    """``never``; ``after_days``: each lot expires ``days`` days after it was earned;
    ``end_of_period``: at the end of the ``period`` (month, quarter, year) in which falls the
    day ``days`` (default 0) after earning; ``inactivity``: everything expires ``days`` days
    after the member's last purchase, earning action or redemption."""

    policy: ExpiryPolicy = ExpiryPolicy.NEVER
    days: Annotated[StrictInt, Field(ge=0, le=EXPIRY_DAYS_MAX)] | None = None
    period: Literal["month", "quarter", "year"] | None = None

    @model_validator(mode="after")
    def _days_match_policy(self) -> ExpiryDocument:
        timed = self.policy in (ExpiryPolicy.AFTER_DAYS, ExpiryPolicy.INACTIVITY)
        if timed and (self.days is None or self.days < 1):
            raise ValueError(f"'days' (at least 1) is required when policy is '{self.policy}'")
        if self.policy is ExpiryPolicy.NEVER and self.days is not None:
            raise ValueError("'days' must be omitted when policy is 'never'")
        if (self.policy is ExpiryPolicy.END_OF_PERIOD) != (self.period is not None):
            raise ValueError("'period' is required with, and only with, policy 'end_of_period'")
        return self


class PointValueDocument(_Strict):
    """What points are worth to the program, in the currency's minor units: ``money_minor``
    for every ``points`` (100 points worth 1.00: ``{"points": 100, "money_minor": 100}``).
    Backtests report the cost of the points a version issues at this value."""

    points: Annotated[StrictInt, Field(ge=1, le=1_000_000)] = 100
    money_minor: Annotated[StrictInt, Field(ge=0, le=1_000_000)] = 100


class PointsWalletDocument(_Strict):
    earn: EarnRateDocument = Field(default_factory=EarnRateDocument)
    value: PointValueDocument = Field(default_factory=PointValueDocument)
    expiry: ExpiryDocument = Field(default_factory=ExpiryDocument)
    pending_days: Annotated[StrictInt, Field(ge=0, le=PENDING_DAYS_MAX)] = Field(
        default=0,
        description="Points earned by a purchase are held, not spendable, for this many days "
        "(e.g. until the return window closes); a return in that time takes them back.",
    )
    negative_balance: NegativeBalancePolicy = NegativeBalancePolicy.ALLOW_DEBT


class EnrollmentDocument(_Strict):
    auto_enroll_on_purchase: bool = False


Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Label = Annotated[str, Field(min_length=1, max_length=128)]
RULES_MAX = 100
FILTER_VALUES_MAX = 500
EFFECT_POINTS_MAX = 1_000_000
FACTOR_PERCENT_MAX = 10_000
EXPRESSION_LENGTH_MAX = 2_048
TIERS_MAX_IN_RULE = 20
PLANS_MAX_IN_RULE = 10
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ItemFilterDocument(_Strict):
    """A line matches when its sku, category or brand is listed."""

    skus: Annotated[list[Label], Field(max_length=FILTER_VALUES_MAX)] = Field(default_factory=list)
    categories: Annotated[list[Label], Field(max_length=FILTER_VALUES_MAX)] = Field(
        default_factory=list
    )
    brands: Annotated[list[Label], Field(max_length=FILTER_VALUES_MAX)] = Field(
        default_factory=list
    )


class HoursDocument(_Strict):
    """A local time window ``[from, until)`` in the program's time zone; may wrap midnight."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: time | None = Field(default=None, alias="from")
    until: time | None = None

    @field_validator("from_", "until", mode="before")
    @classmethod
    def _local_clock_time(cls, value: object) -> object:
        # A local wall-clock time as "HH:MM" (or "HH:MM:SS"): not a number of seconds, and no
        # offset, since the program's time zone decides.
        if value is None or isinstance(value, time):
            if isinstance(value, time) and value.tzinfo is not None:
                raise ValueError("give a local time without an offset, e.g. '08:00'")
            return value
        if not isinstance(value, str) or not re.fullmatch(r"\d{2}:\d{2}(:\d{2})?", value):
            raise ValueError("give a local time as 'HH:MM', e.g. '08:00'")
        return value


class ConditionsDocument(_Strict):
    """All given conditions must hold. Item filters choose the lines the effect applies to."""

    min_total_minor: Annotated[StrictInt, Field(ge=0, le=10**13)] | None = None
    channels: Annotated[list[Label], Field(min_length=1, max_length=50)] | None = None
    stores: Annotated[list[Label], Field(min_length=1, max_length=FILTER_VALUES_MAX)] | None = None
    days_of_week: (
        Annotated[
            list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]], Field(min_length=1)
        ]
        | None
    ) = None
    hours: HoursDocument | None = None
    include: ItemFilterDocument | None = None
    exclude: ItemFilterDocument | None = None
    member_attributes: Annotated[dict[str, str | int | bool | None], Field(max_length=20)] = Field(
        default_factory=dict
    )
    expression: Annotated[str, Field(min_length=1, max_length=EXPRESSION_LENGTH_MAX)] | None = None
    above_average_percent: Annotated[StrictInt, Field(ge=0, le=1000)] | None = None
    tiers: Annotated[list[Slug], Field(min_length=1, max_length=TIERS_MAX_IN_RULE)] | None = None
    plans: Annotated[list[Slug], Field(min_length=1, max_length=PLANS_MAX_IN_RULE)] | None = None


class EffectDocument(_Strict):
    """``per_spend``: ``points`` per ``per_spend_minor`` of the eligible lines' base.
    ``fixed``: ``points`` once. ``multiplier``: ``factor_percent`` of what the other rules
    earned on the eligible lines (200 doubles them)."""

    type: Literal["per_spend", "fixed", "multiplier", "formula"]
    points: Annotated[StrictInt, Field(ge=0, le=EFFECT_POINTS_MAX)] | None = None
    formula: Annotated[str, Field(min_length=1, max_length=EXPRESSION_LENGTH_MAX)] | None = None
    per_spend_minor: Annotated[StrictInt, Field(ge=1, le=PER_SPEND_MINOR_MAX)] | None = None
    rounding: Rounding = Rounding.FLOOR
    factor_percent: Annotated[StrictInt, Field(ge=100, le=FACTOR_PERCENT_MAX)] | None = None
    earn_on_kinds: (
        Annotated[
            list[Literal["product", "gift_card", "shipping", "tax", "deposit", "service"]],
            Field(min_length=1),
        ]
        | None
    ) = Field(
        default=None,
        description="per_spend only: line kinds the rule earns on (default: products only; "
        "gift cards, shipping, tax, deposits and services earn only when named).",
    )

    @model_validator(mode="after")
    def _fields_match_type(self) -> EffectDocument:
        if self.type == "formula":
            if self.formula is None:
                raise ValueError(
                    "a formula effect needs 'formula' (a CEL expression giving an int)"
                )
            if any(v is not None for v in (self.points, self.per_spend_minor, self.factor_percent)):
                raise ValueError("a formula effect takes only 'formula'")
            return self
        if self.formula is not None:
            raise ValueError("'formula' is only for effect type 'formula'")
        if self.earn_on_kinds is not None and self.type != "per_spend":
            raise ValueError("'earn_on_kinds' is only for effect type 'per_spend'")
        if self.type == "multiplier":
            if self.factor_percent is None:
                raise ValueError("a multiplier needs 'factor_percent' (200 doubles)")
            if self.points is not None or self.per_spend_minor is not None:
                raise ValueError("a multiplier takes 'factor_percent', not 'points'")
        else:
            if self.points is None:
                raise ValueError(f"a {self.type} effect needs 'points'")
            if self.factor_percent is not None:
                raise ValueError(f"a {self.type} effect takes no 'factor_percent'")
            if self.type == "fixed" and self.per_spend_minor is not None:
                raise ValueError("a fixed effect takes no 'per_spend_minor'")
        return self


class MemberCapDocument(_Strict):
    """Per member and period: at most ``max_count`` awards and/or ``max_points`` points."""

    period: Literal["day", "week", "month", "year", "lifetime"]
    max_count: Annotated[StrictInt, Field(ge=1, le=1_000_000)] | None = None
    max_points: Annotated[StrictInt, Field(ge=1, le=10**12)] | None = None

    @model_validator(mode="after")
    def _something_capped(self) -> MemberCapDocument:
        if self.max_count is None and self.max_points is None:
            raise ValueError("give 'max_count', 'max_points' or both")
        return self


class BudgetDocument(_Strict):
    """All members together: at most ``points`` per period, never overspent."""

    points: Annotated[StrictInt, Field(ge=1, le=10**13)]
    period: Literal["day", "week", "month", "year", "lifetime"] = "lifetime"


class LimitsDocument(_Strict):
    per_member: Annotated[list[MemberCapDocument], Field(max_length=5)] = Field(
        default_factory=list
    )
    budget: BudgetDocument | None = None


class RuleDocument(_Strict):
    """An earning rule: when it applies (trigger, window, conditions), what it earns (effect),
    and how it combines with others (priority, exclusive_group)."""

    id: Slug
    name: Annotated[str, Field(min_length=1, max_length=200)]
    trigger: Literal["purchase", "action", "enrollment", "return"]
    action: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")] | None = None
    priority: Annotated[StrictInt, Field(ge=-1000, le=1000)] = 0
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    exclusive_group: Slug | None = None
    conditions: ConditionsDocument = Field(default_factory=ConditionsDocument)
    effect: EffectDocument
    limits: LimitsDocument = Field(default_factory=LimitsDocument)
    pending_days: Annotated[StrictInt, Field(ge=0, le=PENDING_DAYS_MAX)] | None = Field(
        default=None,
        description="Days this rule's points are held before they can be spent (e.g. a "
        "review bonus held until moderation). Omitted: the program's points.pending_days for "
        "purchase rules, none for other triggers.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RuleDocument:
        if self.trigger in ("action", "enrollment", "return"):
            if self.trigger == "action" and self.action is None:
                raise ValueError("an action rule names its 'action' (e.g. review_posted)")
            if self.trigger != "action" and self.action is not None:
                raise ValueError("'action' is only for trigger 'action'")
            if self.effect.type not in ("fixed", "formula"):
                raise ValueError(f"a {self.trigger} rule earns 'fixed' or 'formula' points")
            c = self.conditions
            if any(
                v is not None
                for v in (
                    c.min_total_minor,
                    c.channels,
                    c.stores,
                    c.include,
                    c.exclude,
                    c.above_average_percent,
                )
            ):
                raise ValueError(f"a {self.trigger} rule cannot use purchase conditions")
        elif self.action is not None:
            raise ValueError("'action' is only for trigger 'action'")
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("'ends_at' must be after 'starts_at'")
        return self


TIERS_MAX = 20
TIER_SETS_MAX = 5
"""The main set and up to four more."""
TIER_MULTIPLIER_GROUP = "tier-multipliers"
"""The exclusive group of the tier multipliers when a program has several tier sets."""
PERKS_MAX = 20


class TierBenefitsDocument(_Strict):
    """What a tier gives: a multiplier on points earned by spending, a member discount, and
    named perks the API lists (free shipping, lounge access...)."""

    earn_multiplier_percent: Annotated[StrictInt, Field(ge=100, le=FACTOR_PERCENT_MAX)] = 100
    discount_percent: Annotated[StrictInt, Field(ge=0, le=100)] = 0
    perks: Annotated[list[Label], Field(max_length=PERKS_MAX)] = Field(default_factory=list)


class TierDocument(_Strict):
    id: Slug
    name: Label
    threshold: Annotated[StrictInt, Field(ge=0, le=10**13)] = Field(
        description="The metric a member needs over the window to reach this tier."
    )
    benefits: TierBenefitsDocument = Field(default_factory=TierBenefitsDocument)


class TierWindowDocument(_Strict):
    """``rolling_months``: the last ``months`` months, and a tier holds ``months`` months before
    review. ``calendar_year``: the calendar year (program time zone), reviewed each 1 January
    on the year just ended. ``anniversary``: the membership year, reviewed each anniversary.
    ``lifetime``: all time, never reviewed."""

    type: Literal["rolling_months", "calendar_year", "anniversary", "lifetime"] = "calendar_year"
    months: Annotated[StrictInt, Field(ge=1, le=120)] | None = None

    @model_validator(mode="after")
    def _months_match_type(self) -> TierWindowDocument:
        if self.type == "rolling_months" and self.months is None:
            raise ValueError("'months' is required for a 'rolling_months' window")
        if self.type != "rolling_months" and self.months is not None:
            raise ValueError("'months' is only for a 'rolling_months' window")
        return self


class TierSetDocument(_Strict):
    """Ordered tiers on one metric. The first tier's threshold is 0: every member has one."""

    id: Slug = "status"
    metric: Literal["spend", "tier_points", "purchases", "visits"]
    window: TierWindowDocument = Field(default_factory=TierWindowDocument)
    max_levels_down: Annotated[StrictInt, Field(ge=1, le=TIERS_MAX)] = 1
    grace_days: Annotated[StrictInt, Field(ge=0, le=365)] = 0
    levels: Annotated[list[TierDocument], Field(min_length=1, max_length=TIERS_MAX)]

    @model_validator(mode="after")
    def _ordered(self) -> TierSetDocument:
        if self.levels[0].threshold != 0:
            raise ValueError("the first tier's threshold must be 0 (every member has a tier)")
        seen: set[str] = set()
        for before, after in zip(self.levels, self.levels[1:], strict=False):
            if after.threshold <= before.threshold:
                raise ValueError(
                    f"tier {after.id!r}: thresholds must rise ({after.threshold} after "
                    f"{before.threshold})"
                )
        for level in self.levels:
            if level.id in seen:
                raise ValueError(f"tier id {level.id!r} is used twice")
            seen.add(level.id)
        return self


STAMP_CARDS_MAX = 10
BRACKETS_MAX = 20


class MemberDiscountDocument(_Strict):
    """A fixed percentage off for members, optionally only on some categories."""

    percent: Annotated[StrictInt, Field(ge=0, le=100)]
    categories: Annotated[list[Label], Field(min_length=1, max_length=FILTER_VALUES_MAX)] | None = (
        None
    )


class SpendBracketDocument(_Strict):
    from_spend_minor: Annotated[StrictInt, Field(ge=0, le=10**13)]
    percent: Annotated[StrictInt, Field(ge=0, le=100)]


class CumulativeDiscountDocument(_Strict):
    """A percentage that rises with the member's spend so far (less returns)."""

    brackets: Annotated[list[SpendBracketDocument], Field(min_length=1, max_length=BRACKETS_MAX)]

    @model_validator(mode="after")
    def _rising(self) -> CumulativeDiscountDocument:
        spends = [b.from_spend_minor for b in self.brackets]
        if spends != sorted(set(spends)):
            raise ValueError("brackets must be ordered by a rising 'from_spend_minor'")
        return self


class DiscountsDocument(_Strict):
    """Member discounts a checkout asks for with a quote. Each line gets the best of the
    member discount, the cumulative discount and the member's tier discount (not their
    sum)."""

    member: MemberDiscountDocument | None = None
    cumulative: CumulativeDiscountDocument | None = None


class StampCardDocument(_Strict):
    """A card of ``stamps`` stamps (9 coffees, the 10th free): which purchases earn stamps,
    and the reward a full card issues automatically. Extra stamps carry over to the next
    card."""

    id: Slug
    name: Label
    stamps: Annotated[StrictInt, Field(ge=1, le=1_000)]
    reward_points: Annotated[StrictInt, Field(ge=1, le=EFFECT_POINTS_MAX)] = Field(
        description="Points credited when a card is full."
    )
    per: Literal["unit", "purchase"] = Field(
        default="unit",
        description="'unit': a stamp per qualifying unit; 'purchase': one per purchase with a "
        "qualifying line (a visit).",
    )
    include: ItemFilterDocument | None = Field(
        default=None, description="Lines that earn stamps (default: every product line)."
    )
    min_total_minor: Annotated[StrictInt, Field(ge=0, le=10**13)] = 0
    max_per_day: Annotated[StrictInt, Field(ge=1, le=1_000)] | None = Field(
        default=None, description="At most this many stamps per local day (e.g. 1)."
    )


PLANS_MAX = 10


class PlanDocument(_Strict):
    """A paid membership plan: the fee the merchant's payment system collects per period,
    an optional trial, and what it grants (a tier, perks, and the plan's own rules through
    ``conditions.plans``)."""

    id: Slug
    name: Label
    fee_minor: Annotated[StrictInt, Field(ge=0, le=10**9)]
    period: Literal["month", "year"]
    trial_days: Annotated[StrictInt, Field(ge=0, le=365)] = 0
    grants_tier: Slug | None = Field(
        default=None,
        description="While the membership grants benefits, the member has at least this tier.",
    )
    perks: Annotated[list[Label], Field(max_length=PERKS_MAX)] = Field(default_factory=list)


REWARDS_MAX = 200
Expression = Annotated[str, Field(min_length=1, max_length=EXPRESSION_LENGTH_MAX)]
SEGMENTS_MAX = 50
SEGMENTS_MAX_IN_REWARD = 20


class SegmentDocument(_Strict):
    """A named group of members, defined by a CEL condition over ``member`` and ``now``
    (attributes, tier, plans, enrolment date, birthday...). Rewards name segments to say who
    may redeem them."""

    id: Slug
    name: Label
    description: Annotated[str, Field(max_length=1_000)] | None = None
    condition: Expression


class RewardLimitDocument(_Strict):
    max_count: Annotated[StrictInt, Field(ge=1, le=1_000_000)]
    period: Literal["day", "week", "month", "year", "lifetime"] = "lifetime"


class RewardDocument(_Strict):
    """A reward members get for points: a coupon (an amount or a percentage off, with a
    minimum order and the products it applies to), a free product, a gift card, or an
    experience or physical reward the merchant fulfils."""

    id: Slug
    name: Label
    description: Annotated[str, Field(max_length=1_000)] | None = None
    image_url: Annotated[str, Field(max_length=500, pattern=r"^https?://")] | None = None
    type: Literal["coupon_amount", "coupon_percent", "free_product", "gift_card", "experience"]
    cost_points: Annotated[StrictInt, Field(ge=1, le=10**9)]
    cost_by_tier: dict[Slug, Annotated[StrictInt, Field(ge=1, le=10**9)]] = Field(
        default_factory=dict, description="A different cost for some tiers."
    )
    value_minor: Annotated[StrictInt, Field(ge=1, le=10**9)] | None = None
    percent: Annotated[StrictInt, Field(ge=1, le=100)] | None = None
    min_order_minor: Annotated[StrictInt, Field(ge=0, le=10**13)] = 0
    skus: Annotated[list[Label], Field(max_length=FILTER_VALUES_MAX)] = Field(default_factory=list)
    stock: Annotated[StrictInt, Field(ge=0, le=10**9)] | None = None
    limit_per_member: RewardLimitDocument | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    tiers: Annotated[list[Slug], Field(min_length=1, max_length=TIERS_MAX)] | None = None
    segments: (
        Annotated[list[Slug], Field(min_length=1, max_length=SEGMENTS_MAX_IN_REWARD)] | None
    ) = Field(default=None, description="Only members in at least one of these segments.")
    condition: Expression | None = Field(
        default=None, description="Only members for whom this CEL condition holds."
    )
    valid_days: Annotated[StrictInt, Field(ge=1, le=3_650)] = 90

    @model_validator(mode="after")
    def _fields_match_type(self) -> RewardDocument:
        if self.type in ("coupon_amount", "gift_card") and self.value_minor is None:
            raise ValueError(f"a {self.type} reward needs 'value_minor'")
        if self.type == "coupon_percent" and self.percent is None:
            raise ValueError("a coupon_percent reward needs 'percent'")
        if self.type == "free_product" and not self.skus:
            raise ValueError("a free_product reward names its product in 'skus'")
        return self


CASHBACK_RATE_BP_MAX = 10_000
PAYMENT_AMOUNT_MAX = 10**12


class CashbackDocument(_Strict):
    """Cashback: ``rate_bp`` basis points (1/100 of a percent; 250 is 2.5%) of what an order's
    product lines cost after their discounts, credited in minor units of the program's
    currency to the member's cashback wallet, rounded once per order."""

    rate_bp: Annotated[StrictInt, Field(ge=0, le=CASHBACK_RATE_BP_MAX)]
    rate_bp_by_tier: dict[Slug, Annotated[StrictInt, Field(ge=0, le=CASHBACK_RATE_BP_MAX)]] = Field(
        default_factory=dict, description="The rate for members of these tiers."
    )
    rounding: Rounding = Rounding.FLOOR
    include: ItemFilterDocument | None = Field(
        default=None, description="Only these lines earn cashback."
    )
    exclude: ItemFilterDocument | None = Field(
        default=None, description="These lines earn no cashback."
    )
    expiry: ExpiryDocument = Field(default_factory=ExpiryDocument)
    pending_days: Annotated[StrictInt, Field(ge=0, le=PENDING_DAYS_MAX)] = Field(
        default=0,
        description="Cashback earned by a purchase can't be spent for this many days.",
    )

    @model_validator(mode="after")
    def _expiry_per_lot(self) -> CashbackDocument:
        if self.expiry.policy is ExpiryPolicy.INACTIVITY:
            raise ValueError(
                "cashback expiry can be 'never', 'after_days' or 'end_of_period'; "
                "'inactivity' applies to points only"
            )
        return self


class PointsPaymentDocument(_Strict):
    """Paying part of an order with points, converted at ``points.value``."""

    enabled: bool = True
    min_points: Annotated[StrictInt, Field(ge=0, le=PAYMENT_AMOUNT_MAX)] = 0
    max_points: Annotated[StrictInt, Field(ge=1, le=PAYMENT_AMOUNT_MAX)] | None = None
    max_share_percent: Annotated[StrictInt, Field(ge=1, le=100)] = 100


class CashbackPaymentDocument(_Strict):
    """Paying part of an order with cashback."""

    enabled: bool = True
    min_minor: Annotated[StrictInt, Field(ge=0, le=PAYMENT_AMOUNT_MAX)] = 0
    max_minor: Annotated[StrictInt, Field(ge=1, le=PAYMENT_AMOUNT_MAX)] | None = None
    max_share_percent: Annotated[StrictInt, Field(ge=1, le=100)] = 100


class CheckoutDocument(_Strict):
    """What points and cashback may pay at checkout (through holds: reserve, then capture)."""

    min_order_minor: Annotated[StrictInt, Field(ge=0, le=PAYMENT_AMOUNT_MAX)] = 0
    points: PointsPaymentDocument = Field(default_factory=PointsPaymentDocument)
    cashback: CashbackPaymentDocument = Field(default_factory=CashbackPaymentDocument)


class TransfersDocument(_Strict):
    """Whether members may give points to other members, and how many."""

    enabled: bool = False
    max_points_per_transfer: Annotated[StrictInt, Field(ge=1, le=10**12)] | None = None
    max_points_per_month: Annotated[StrictInt, Field(ge=1, le=10**12)] | None = None


class ProgramDocument(_Strict):
    """A program definition, version 1 of the schema."""

    schema_version: Literal[1] = 1
    name: Annotated[str, Field(min_length=1, max_length=200)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    time_zone: Annotated[str, Field(max_length=64)] = "UTC"
    points: PointsWalletDocument = Field(default_factory=PointsWalletDocument)
    enrollment: EnrollmentDocument = Field(default_factory=EnrollmentDocument)
    rules: Annotated[list[RuleDocument], Field(max_length=RULES_MAX)] = Field(default_factory=list)
    tiers: TierSetDocument | None = None
    tier_sets: Annotated[list[TierSetDocument], Field(max_length=TIER_SETS_MAX - 1)] = Field(
        default_factory=list,
        description="Further tier sets, each tracked, reviewed and recalculated on its own "
        "(the main one is 'tiers').",
    )
    stamp_cards: Annotated[list[StampCardDocument], Field(max_length=STAMP_CARDS_MAX)] = Field(
        default_factory=list
    )
    discounts: DiscountsDocument | None = None
    plans: Annotated[list[PlanDocument], Field(max_length=PLANS_MAX)] = Field(default_factory=list)
    rewards: Annotated[list[RewardDocument], Field(max_length=REWARDS_MAX)] = Field(
        default_factory=list
    )
    segments: Annotated[list[SegmentDocument], Field(max_length=SEGMENTS_MAX)] = Field(
        default_factory=list
    )
    transfers: TransfersDocument = Field(default_factory=TransfersDocument)
    cashback: CashbackDocument | None = None
    checkout: CheckoutDocument = Field(default_factory=CheckoutDocument)

    @field_validator("stamp_cards")
    @classmethod
    def _unique_card_ids(cls, cards: list[StampCardDocument]) -> list[StampCardDocument]:
        ids = [card.id for card in cards]
        if len(ids) != len(set(ids)):
            raise ValueError("stamp card ids must be unique")
        return cards

    def all_tier_sets(self) -> list[TierSetDocument]:
        """The main tier set first, then the others."""
        return [self.tiers, *self.tier_sets] if self.tiers is not None else []

    @model_validator(mode="after")
    def _tier_sets_are_distinct(self) -> ProgramDocument:
        if self.tier_sets and self.tiers is None:
            raise ValueError("'tier_sets' needs a main tier set in 'tiers'")
        set_ids: set[str] = set()
        tier_sets: dict[str, str] = {}
        for tier_set in self.all_tier_sets():
            if tier_set.id in set_ids:
                raise ValueError(f"tier set id {tier_set.id!r} is used twice")
            set_ids.add(tier_set.id)
            for level in tier_set.levels:
                if level.id in tier_sets:
                    raise ValueError(
                        f"tier id {level.id!r} is in tier sets {tier_sets[level.id]!r} and "
                        f"{tier_set.id!r}: tier ids must be unique across a program's sets"
                    )
                tier_sets[level.id] = tier_set.id
        return self

    @model_validator(mode="after")
    def _rules_name_known_tiers(self) -> ProgramDocument:
        known = {level.id for tier_set in self.all_tier_sets() for level in tier_set.levels}
        plans = {plan.id for plan in self.plans}
        if len(plans) != len(self.plans):
            raise ValueError("plan ids must be unique")
        for rule in self.rules:
            for tier in rule.conditions.tiers or []:
                if tier not in known:
                    raise ValueError(
                        f"rule {rule.id!r} names tier {tier!r}, which is in no tier set"
                    )
            for plan in rule.conditions.plans or []:
                if plan not in plans:
                    raise ValueError(f"rule {rule.id!r} names plan {plan!r}, not in 'plans'")
        reward_ids = [reward.id for reward in self.rewards]
        if len(reward_ids) != len(set(reward_ids)):
            raise ValueError("reward ids must be unique")
        segments = {segment.id for segment in self.segments}
        if len(segments) != len(self.segments):
            raise ValueError("segment ids must be unique")
        # Tier cashback rates follow the main set (what ``member.tier`` is); tier-only rewards
        # and tier prices may name a tier of any set.
        main = {level.id for level in self.tiers.levels} if self.tiers else set()
        for reward in self.rewards:
            for tier in [*(reward.tiers or []), *reward.cost_by_tier]:
                if tier not in known:
                    raise ValueError(
                        f"reward {reward.id!r} names tier {tier!r}, not in any tier set"
                    )
            for segment in reward.segments or []:
                if segment not in segments:
                    raise ValueError(
                        f"reward {reward.id!r} names segment {segment!r}, not in 'segments'"
                    )
        for tier in self.cashback.rate_bp_by_tier if self.cashback else []:
            if tier not in main:
                raise ValueError(f"cashback names tier {tier!r}, not in the main set 'tiers'")
        for plan_doc in self.plans:
            if plan_doc.grants_tier is not None and plan_doc.grants_tier not in known:
                raise ValueError(
                    f"plan {plan_doc.id!r} grants tier {plan_doc.grants_tier!r}, which is in no "
                    "tier set"
                )
        return self

    @field_validator("rules")
    @classmethod
    def _unique_rule_ids(cls, rules: list[RuleDocument]) -> list[RuleDocument]:
        seen: set[str] = set()
        for rule in rules:
            if rule.id == BASE_RULE_ID:
                raise ValueError(f"rule id {BASE_RULE_ID!r} is reserved for points.earn")
            if rule.id.startswith("tier-"):
                raise ValueError(
                    f"rule id {rule.id!r}: ids starting 'tier-' are reserved for tier multipliers"
                )
            if rule.exclusive_group == TIER_MULTIPLIER_GROUP:
                raise ValueError(
                    f"rule {rule.id!r}: exclusive group {TIER_MULTIPLIER_GROUP!r} is reserved "
                    "for tier multipliers"
                )
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        return rules

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


def _item_filter(doc: ItemFilterDocument | None) -> ItemFilter | None:
    if doc is None:
        return None
    return ItemFilter(frozenset(doc.skus), frozenset(doc.categories), frozenset(doc.brands))


def rule_from_document(doc: RuleDocument) -> Rule:
    c = doc.conditions
    e = doc.effect
    return Rule(
        rule_id=doc.id,
        name=doc.name,
        trigger=Trigger(doc.trigger),
        action=doc.action,
        priority=doc.priority,
        starts_at=doc.starts_at,
        ends_at=doc.ends_at,
        exclusive_group=doc.exclusive_group,
        conditions=Conditions(
            min_total_minor=c.min_total_minor,
            channels=frozenset(c.channels) if c.channels is not None else None,
            stores=frozenset(c.stores) if c.stores is not None else None,
            days_of_week=frozenset(WEEKDAYS.index(d) for d in c.days_of_week)
            if c.days_of_week is not None
            else None,
            hours_from=c.hours.from_ if c.hours else None,
            hours_until=c.hours.until if c.hours else None,
            include=_item_filter(c.include),
            exclude=_item_filter(c.exclude),
            member_attributes=dict(c.member_attributes),
            has_expression=c.expression is not None,
            above_average_percent=c.above_average_percent,
            tiers=frozenset(c.tiers) if c.tiers is not None else None,
            plans=frozenset(c.plans) if c.plans is not None else None,
        ),
        effect=Effect(
            kind=EffectKind(e.type),
            points=e.points or 0,
            per_spend_minor=e.per_spend_minor or 100,
            rounding=e.rounding,
            factor_percent=e.factor_percent or 100,
            earn_on_kinds=frozenset(e.earn_on_kinds or ["product"]),
        ),
        member_caps=tuple(
            MemberCap(Period(cap.period), cap.max_count, cap.max_points)
            for cap in doc.limits.per_member
        ),
        budget=Budget(doc.limits.budget.points, Period(doc.limits.budget.period))
        if doc.limits.budget is not None
        else None,
        pending_days=doc.pending_days,
    )


def base_rule(document: ProgramDocument) -> Rule:
    """The wallet's earn rate, as the rule every purchase line earns by."""
    earn = document.points.earn
    return Rule(
        rule_id=BASE_RULE_ID,
        name="Base rate",
        trigger=Trigger.PURCHASE,
        priority=1001,
        effect=Effect(
            EffectKind.PER_SPEND,
            points=earn.points,
            per_spend_minor=earn.per_spend_minor,
            rounding=earn.rounding,
        ),
    )


def tier_set_from_document(doc: TierSetDocument) -> TierSet:
    return TierSet(
        set_id=doc.id,
        metric=TierMetric(doc.metric),
        window=Window(WindowKind(doc.window.type), doc.window.months or 12),
        tiers=tuple(
            Tier(
                tier_id=level.id,
                name=level.name,
                threshold=level.threshold,
                earn_multiplier_percent=level.benefits.earn_multiplier_percent,
                discount_percent=level.benefits.discount_percent,
                perks=tuple(level.benefits.perks),
            )
            for level in doc.levels
        ),
        max_levels_down=doc.max_levels_down,
        grace_days=doc.grace_days,
    )


def discount_policy(doc: DiscountsDocument | None) -> DiscountPolicy:
    if doc is None:
        return DiscountPolicy()
    member = doc.member
    return DiscountPolicy(
        member_percent=member.percent if member else 0,
        member_categories=frozenset(member.categories)
        if member and member.categories is not None
        else None,
        brackets=tuple(
            SpendBracket(b.from_spend_minor, b.percent)
            for b in (doc.cumulative.brackets if doc.cumulative else [])
        ),
    )


def tier_rules(document: ProgramDocument) -> list[Rule]:
    """A tier's earn multiplier, as a multiplier rule for members of that tier: evaluated,
    capped and explained like any other rule (its id is ``tier-<tier id>``)."""
    several = len(document.all_tier_sets()) > 1
    return [
        Rule(
            rule_id=f"tier-{level.id}",
            name=f"{level.name} tier multiplier",
            trigger=Trigger.PURCHASE,
            priority=-1001,
            # A member in several sets gets the best of their tiers' multipliers, not their
            # product: the group pays only the one that earns the most.
            exclusive_group=TIER_MULTIPLIER_GROUP if several else None,
            conditions=Conditions(tiers=frozenset({level.id})),
            effect=Effect(
                EffectKind.MULTIPLIER, factor_percent=level.benefits.earn_multiplier_percent
            ),
        )
        for tier_set in document.all_tier_sets()
        for level in tier_set.levels
        if level.benefits.earn_multiplier_percent > 100
    ]


def _expiry(doc: ExpiryDocument, time_zone: str) -> Expiry:
    return Expiry(policy=doc.policy, days=doc.days, period=doc.period, time_zone=time_zone)


def cashback_policy(document: ProgramDocument) -> CashbackPolicy | None:
    doc = document.cashback
    if doc is None:
        return None
    return CashbackPolicy(
        rate_bp=doc.rate_bp,
        rounding=doc.rounding,
        rate_bp_by_tier=dict(doc.rate_bp_by_tier),
        include=_item_filter(doc.include),
        exclude=_item_filter(doc.exclude),
        expiry=_expiry(doc.expiry, document.time_zone),
        pending_days=doc.pending_days,
    )


def checkout_rules(doc: CheckoutDocument) -> CheckoutRules:
    return CheckoutRules(
        points=PaymentRule(
            enabled=doc.points.enabled,
            min_amount=doc.points.min_points,
            max_amount=doc.points.max_points,
            max_share_percent=doc.points.max_share_percent,
        ),
        cashback=PaymentRule(
            enabled=doc.cashback.enabled,
            min_amount=doc.cashback.min_minor,
            max_amount=doc.cashback.max_minor,
            max_share_percent=doc.cashback.max_share_percent,
        ),
        min_order_minor=doc.min_order_minor,
    )


def settings_from_document(document: ProgramDocument, *, version: int) -> ProgramSettings:
    wallet = document.points
    return ProgramSettings(
        currency=document.currency,
        earn=EarnRate(
            points=wallet.earn.points,
            per_spend_minor=wallet.earn.per_spend_minor,
            rounding=wallet.earn.rounding,
        ),
        expiry=_expiry(wallet.expiry, document.time_zone),
        negative_balance=wallet.negative_balance,
        pending_days=wallet.pending_days,
        point_value=PointValue(wallet.value.points, wallet.value.money_minor),
        auto_enroll=document.enrollment.auto_enroll_on_purchase,
        version=version,
        time_zone=document.time_zone,
        rules=(
            base_rule(document),
            *(rule_from_document(r) for r in document.rules),
            *tier_rules(document),
        ),
        tier_set=tier_set_from_document(document.tiers) if document.tiers else None,
        tier_sets=tuple(tier_set_from_document(doc) for doc in document.all_tier_sets()),
        discounts=discount_policy(document.discounts),
        cashback=cashback_policy(document),
        checkout=checkout_rules(document.checkout),
        transfers=TransferRules(
            enabled=document.transfers.enabled,
            max_per_transfer=document.transfers.max_points_per_transfer,
            max_per_month=document.transfers.max_points_per_month,
        ),
        rewards=tuple(
            Reward(
                reward_id=r.id,
                name=r.name,
                type=RewardType(r.type),
                cost_points=r.cost_points,
                description=r.description,
                image_url=r.image_url,
                cost_by_tier=dict(r.cost_by_tier),
                value_minor=r.value_minor or 0,
                percent=r.percent or 0,
                min_order_minor=r.min_order_minor,
                skus=frozenset(r.skus),
                stock=r.stock,
                limit_count=r.limit_per_member.max_count if r.limit_per_member else None,
                limit_period=Period(r.limit_per_member.period)
                if r.limit_per_member
                else Period.LIFETIME,
                starts_at=r.starts_at,
                ends_at=r.ends_at,
                tiers=frozenset(r.tiers) if r.tiers is not None else None,
                segments=frozenset(r.segments) if r.segments is not None else None,
                condition=r.condition,
                valid_days=r.valid_days,
            )
            for r in document.rewards
        ),
        segments=tuple(
            Segment(
                segment_id=segment.id,
                name=segment.name,
                condition=segment.condition,
                description=segment.description,
            )
            for segment in document.segments
        ),
        plans=tuple(
            Plan(
                plan_id=plan.id,
                name=plan.name,
                fee_minor=plan.fee_minor,
                period=PlanPeriod(plan.period),
                trial_days=plan.trial_days,
                grants_tier=plan.grants_tier,
                perks=tuple(plan.perks),
            )
            for plan in document.plans
        ),
        stamp_cards=tuple(
            StampCard(
                card_id=card.id,
                name=card.name,
                stamps=card.stamps,
                reward_points=card.reward_points,
                per=StampPer(card.per),
                include=_item_filter(card.include),
                min_total_minor=card.min_total_minor,
                max_per_day=card.max_per_day,
            )
            for card in document.stamp_cards
        ),
        expressions={
            r.id: r.conditions.expression for r in document.rules if r.conditions.expression
        },
        formulas={r.id: r.effect.formula for r in document.rules if r.effect.formula},
    )
