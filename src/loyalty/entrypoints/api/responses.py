"""Response bodies, for the OpenAPI document. Handlers return the use cases' plain results; a
test validates real responses against these models (``extra="forbid"``), so they cannot drift
from what the API sends."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """RFC 9457 problem details. Extra members depend on ``code`` (see docs/errors.md)."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    code: str
    detail: str
    instance: str | None = None


class ProgramOut(_Body):
    id: str
    version: int
    document: dict[str, Any]
    created_at: str
    updated_at: str
    current_version: int | None = None


class ProgramSummary(_Body):
    id: str
    name: str
    version: int
    created_at: str


class ProgramList(_Body):
    items: list[ProgramSummary]


class DraftOut(_Body):
    id: str
    program_id: str
    base_version: int
    document: dict[str, Any]
    created_at: str
    created_by: str | None
    published_version: int | None
    published_at: str | None
    diff: list[str]
    """Dotted paths of what the draft changes from ``base_version``."""


class DraftList(_Body):
    items: list[DraftOut]


class MemberOut(_Body):
    id: str
    program_id: str
    external_id: str
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None
    birth_date: str | None
    gender: str | None
    locale: str | None
    marketing_consent: bool
    attributes: dict[str, Any]
    enrolled_at: str
    updated_at: str
    enrollment_source: Literal["api", "auto_enroll"]
    welcome: dict[str, Any] | None = None
    """On enrollment only: points paid by enrollment rules (points, rules, entry_id)."""


class MemberPage(_Body):
    items: list[MemberOut]
    next_cursor: str | None


class ExpiryBucket(_Body):
    expires_at: str
    points: int
    expired: bool


class CashExpiryBucket(_Body):
    expires_at: str
    amount_minor: int
    expired: bool


class CashbackBalance(_Body):
    """The member's cashback wallet, in minor units of the program's currency."""

    balance_minor: int
    available_minor: int
    pending_minor: int
    debt_minor: int
    expiring: list[CashExpiryBucket]


class BalanceOut(_Body):
    member_id: str
    balance: int
    available: int
    pending: int
    debt: int
    expiring: list[ExpiryBucket] = Field(
        description="Points by expiry time, soonest first: up to 100 groups from "
        "`GET .../balance`, the soonest 3 in a write's answer (the other figures count "
        "every lot)."
    )
    cashback: CashbackBalance | None = None
    """The cashback wallet (null until the member's first cashback)."""
    as_of: str


class LotOut(_Body):
    id: str
    points: int
    expires_at: str | None
    available_at: str | None = None
    """When a pending lot becomes spendable (null: at once)."""
    debt_repaid: int


class RuleShare(_Body):
    """What one rule earned (on a line, or on the whole event)."""

    rule: str
    points: int


class RuleEarning(_Body):
    """What one rule earned on an event, and why."""

    rule: str
    points: int
    inputs: dict[str, Any]
    """What the effect computed from. ``per_spend``: ``base_minor`` (the eligible lines'
    base), ``points``, ``per_spend_minor``, ``rounding``. ``multiplier``: ``factor_percent``,
    ``multiplied_points``, ``rounding``. ``fixed``: ``points``. ``formula``: ``result`` (the
    formula's value before it is kept within 0..10^6). A rule a limit cut also has
    ``points_before_limits``."""
    lines: list[str] | None = None
    """Purchases only: the lines the rule earned on."""


class LimitedRule(_Body):
    """A rule a per-member cap or a budget held back."""

    rule: str
    points_before_limits: int
    points: int


class LineEarning(_Body):
    line_id: str
    sku: str | None
    base_minor: int
    points: int
    rules: list[RuleShare]


class TierChange(_Body):
    """A tier upgrade the event caused (``null`` when it caused none)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str = Field(alias="from")
    to: str
    metric: int


class StampCardView(_Body):
    card: str
    name: str
    stamps_per_card: int
    on_card: int
    """Stamps on the current card."""
    needed: int
    """Stamps still needed to fill the current card."""
    cards_completed: int
    rewards_issued: int
    reward_points: int


class StampsGiven(StampCardView):
    stamps: int
    """Stamps this purchase gave (0: none on this card)."""
    reward_entries: list[str]
    """Ledger entries of the rewards the purchase's stamps filled cards for."""


class StampsTaken(StampCardView):
    stamps: int
    """Stamps this return took back (negative)."""
    reward_points_taken: int
    """Points of rewards taken back because a completed card fell short."""


class CashbackLot(_Body):
    id: str
    amount_minor: int
    expires_at: str | None
    available_at: str | None
    debt_repaid_minor: int


class CashbackEarned(_Body):
    earned_minor: int
    eligible_minor: int
    """The spend that earned cashback: product lines after their discounts."""
    rate_bp: int
    """The rate applied, in basis points (250 = 2.5%)."""
    entry_id: str | None
    lot: CashbackLot | None


class CashbackReturned(_Body):
    reversed_minor: int
    """Cashback of the order the rest of the basket no longer earns, over all its returns."""
    charged_minor: int
    """What this return charged: taken, owed or written off."""
    taken_minor: int
    debt_added_minor: int
    written_off_minor: int
    entry_id: str | None


class PurchaseResult(_Body):
    event_id: str
    type: Literal["purchase"]
    order_id: str
    member_id: str
    member_enrolled: bool
    points_earned: int
    base_minor: int
    program_version: int
    entry_id: str | None
    lot: LotOut | None
    """The lot spendable soonest (null when nothing was earned)."""
    lots: list[LotOut]
    """Every lot the event created: one, or one per pending period when rules hold their
    points for different times."""
    rules: list[RuleEarning]
    limited: list[LimitedRule]
    tier: str | None
    """The member's tier when the purchase was evaluated (null: the program has no tiers)."""
    tier_change: TierChange | None
    stamps: list[StampsGiven]
    cashback: CashbackEarned | None = None
    """Cashback credited (null: the program pays none)."""
    member_discount_minor: int
    """The member discount the checkout said it granted."""
    lines: list[LineEarning]
    balance: BalanceOut


class LineReturned(_Body):
    line_id: str
    quantity: int
    points: int


class KeptRule(_Body):
    rule: str
    paid: int
    kept: int


class KeptPoints(_Body):
    points: int
    rules: list[KeptRule]


class PaymentRestored(_Body):
    wallet: Literal["points", "cashback"]
    amount: int
    """Points, or minor units of cashback, given back to the lots they came from."""
    entry_id: str


class ReturnResult(_Body):
    event_id: str
    type: Literal["return"]
    return_id: str
    order_id: str
    member_id: str
    points_reversed: int
    points_already_expired: int
    points_taken: int
    debt_added: int
    points_written_off: int
    program_version: int
    entry_id: str | None
    lines: list[LineReturned]
    stamps: list[StampsTaken]
    cashback: CashbackReturned | None = None
    """Cashback taken back (null: the order earned none)."""
    payments_restored: list[PaymentRestored] = []
    """Points and cashback that paid for the returned items (through holds captured for this
    order: ``order_reference`` = the order id), given back in proportion to the value
    returned."""
    points_adjusted: int
    """Of ``points_reversed``, what the rest of the basket no longer earns beyond the returned
    units' own points (a threshold bonus it no longer reaches); negative when the rest earns
    a little more on its own (rounding)."""
    kept: KeptPoints | None
    """What the rest of the basket still earns, per rule (null for an order without lines)."""
    points_earned: int
    """Points the program's ``return`` rules paid for this return (0 without such rules)."""
    rules: list[RuleEarning]
    earn_entry_id: str | None
    """The entry that credited ``points_earned``, apart from the reversal's ``entry_id``."""
    balance: BalanceOut


class ActionResult(_Body):
    event_id: str
    type: Literal["action"]
    action: str
    id: str
    member_id: str
    member_enrolled: bool
    points_earned: int
    rules: list[RuleEarning]
    entry_id: str | None
    lot: LotOut | None
    lots: list[LotOut]
    tier_change: TierChange | None
    program_version: int


class EventResult(RootModel[PurchaseResult | ReturnResult | ActionResult]):
    """What ``POST .../events`` answers, by the event's ``type``."""


class EntrySource(_Body):
    type: str
    id: str | None


class LedgerEntry(_Body):
    id: str
    kind: str
    points: int
    created_at: str
    program_version: int
    reason: str | None
    source: EntrySource | None
    reverses_entry_id: str | None
    actor: str | None
    details: dict[str, Any]


class LedgerPage(_Body):
    items: list[LedgerEntry]
    next_cursor: str | None


class LotTaken(_Body):
    lot_id: str
    points: int
    expires_at: str | None


class RedemptionOut(_Body):
    id: str
    member_id: str
    points: int
    reason: str | None
    reference: str | None
    status: Literal["completed"]
    entry_id: str
    created_at: str
    lots: list[LotTaken]
    balance: BalanceOut


class CancellationOut(_Body):
    id: str
    member_id: str
    points: int
    status: Literal["cancelled"]
    cancel_entry_id: str
    cancelled_at: str
    lots: list[LotTaken]
    balance: BalanceOut


class RedemptionStatus(_Body):
    id: str
    member_id: str
    points: int
    reason: str | None
    reference: str | None
    status: Literal["completed", "cancelled"]
    entry_id: str
    created_at: str
    cancelled_at: str | None


class AdjustmentOut(_Body):
    entry_id: str
    member_id: str
    points: int
    reason: str
    reference: str | None
    actor: str
    lots: list[LotTaken]
    balance: BalanceOut


class ApiKeyCreated(_Body):
    id: str
    token: str
    scopes: list[str]
    program_id: str | None


class ApiKeyOut(_Body):
    id: str
    name: str
    scopes: list[str]
    program_id: str | None
    created_at: str
    revoked_at: str | None


class ApiKeyList(_Body):
    items: list[ApiKeyOut]


def documented(status: int, model: type[BaseModel], description: str) -> dict[int | str, Any]:
    """``responses=`` for a route: its success body and the problem shape of its errors."""
    return {
        status: {"model": model, "description": description},
        "4XX": {"model": Problem, "description": "A problem (application/problem+json)."},
        503: {"model": Problem, "description": "Database unavailable; retry (Retry-After)."},
    }


class BalanceAfter(_Body):
    balance: int
    available: int
    pending: int
    debt: int


class HeldPoints(_Body):
    points: int
    available_at: str | None
    """When these points become spendable (null: at once)."""


class DiscountLine(_Body):
    line_id: str
    percent: int
    source: str
    """``member``, ``cumulative`` or ``tier``: the best of them for this line."""
    amount_minor: int


class DiscountsOffered(_Body):
    amount_minor: int
    cumulative_spend_minor: int
    lines: list[DiscountLine]


class PaymentOption(_Body):
    """What the member could pay of this order with one wallet, now."""

    wallet: Literal["points", "cashback"]
    available: int
    """Spendable now, in the wallet's unit (points; minor units for cashback)."""
    min: int
    """The least one payment with this wallet may use (the program's checkout rules)."""
    max: int
    """The most this order may take from this wallet: the balance, within the rules."""
    max_value_minor: int
    """What ``max`` pays, in minor units (points at the program's point value)."""
    reason: str | None
    """Why ``max`` is 0: ``disabled``, ``order_below_minimum``, ``share_used``,
    ``below_minimum``, ``no_balance``, ``balance_below_minimum``."""


class QuoteOut(_Body):
    member_id: str | None
    member_enrolled: bool
    points_earned: int
    base_minor: int
    program_version: int
    rules: list[RuleEarning]
    limited: list[LimitedRule]
    lines: list[LineEarning]
    expires_at: str | None
    debt_repaid: int
    points_pending: int
    """Of ``points_earned``, the points a pending period would hold."""
    lots: list[HeldPoints]
    balance_after: BalanceAfter | None
    discounts: DiscountsOffered | None
    """The member discounts to apply at checkout (null for a cart without a member)."""
    cashback_earned_minor: int | None = None
    """Cashback the cart would earn (null: the program pays none)."""
    payment: list[PaymentOption] | None = None
    """What the member could pay of this cart with points and cashback before it earns
    anything (null for a guest cart or a member not enrolled yet)."""


class BacktestOut(_Body):
    events: int
    candidate: dict[str, Any]
    published: dict[str, Any]
    difference: dict[str, Any]


class TierBenefits(_Body):
    earn_multiplier_percent: int
    discount_percent: int
    perks: list[str]


class TierView(_Body):
    id: str
    name: str
    threshold: int
    level: int
    benefits: TierBenefits


class TierWindow(_Body):
    type: str
    months: int | None
    from_: str | None = Field(alias="from")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NextTier(_Body):
    tier: TierView
    needed: int
    progress_percent: int


class KeepTier(_Body):
    review_at: str
    metric_value: int
    needed: int


class TierHistoryItem(_Body):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str | None = Field(alias="from")
    to: str
    reason: str
    note: str | None
    metric: int | None
    at: str


class MemberTierSetOut(_Body):
    member_id: str
    tier_set: str
    metric: str
    window: TierWindow
    tier: TierView
    since: str
    until: str | None
    manual: bool
    metric_value: int
    next: NextTier | None
    keep: KeepTier | None
    projected: TierView | None
    history: list[TierHistoryItem]


class MemberTierOut(MemberTierSetOut):
    """The main tier set's view, and the same for each other tier set."""

    other_sets: list[MemberTierSetOut]


class TierMove(_Body):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str = Field(alias="from")
    to: str
    members: int


class RecalculationOut(_Body):
    tier_set: str
    members: int
    changes: list[TierMove]
    members_moving: int
    applied: bool


class ExpiringMember(_Body):
    member_id: str
    external_id: str
    email: str | None
    points: int
    first_expires_at: str


class ExpiringPage(_Body):
    within_days: int
    as_of: str
    items: list[ExpiringMember]
    next_cursor: str | None


class Visits(_Body):
    days: int
    """Distinct local days with a purchase."""
    purchases: int


class StampCardsOut(_Body):
    member_id: str
    cards: list[StampCardView]
    visits: Visits


class MembershipOut(_Body):
    id: str
    member_id: str
    plan: str
    status: Literal["trial", "active", "cancelled", "ended", "lapsed"]
    benefits: bool
    """Whether the membership grants its benefits now (trial, active, or cancelled but
    still in its paid period)."""
    started_at: str
    period_start: str
    period_end: str
    in_trial: bool
    cancelled_at: str | None
    fee_minor: int | None
    grants_tier: str | None
    perks: list[str]


class MembershipList(_Body):
    member_id: str
    items: list[MembershipOut]


class BatchResult(_Body):
    index: int
    status: int
    """What ``POST .../events`` would have answered for this event alone: 201, 200 for a
    replay of an event already recorded, or the problem's status."""
    replayed: bool
    body: dict[str, Any] | None
    """The event's answer (as from ``POST .../events``) when it was recorded or replayed."""
    problem: dict[str, Any] | None
    """Why it was refused (``code``, ``detail`` and the code's members), else null."""


class BatchOut(_Body):
    accepted: int
    replayed: int
    rejected: int
    results: list[BatchResult]


class HoldOut(_Body):
    id: str
    member_id: str
    wallet: Literal["points", "cashback"]
    points: int
    """What the hold took: points, or minor units for a ``cashback`` hold (as are
    ``captured_points`` and ``released_points``)."""
    order_reference: str | None
    status: Literal["held", "captured", "released", "expired"]
    created_at: str
    expires_at: str
    captured_points: int | None
    released_points: int | None
    settled_at: str | None
    entry_id: str
    capture_entry_id: str | None
    release_entry_id: str | None
    balance: BalanceOut | None = None


class RewardView(_Body):
    id: str
    name: str
    description: str | None
    image_url: str | None
    type: str
    cost_points: int
    value_minor: int | None
    percent: int | None
    min_order_minor: int
    skus: list[str]


class MemberReward(RewardView):
    available: bool
    reasons: list[dict[str, Any]]
    """Why not, when not: ``points_short`` (with ``points_short``), ``tier_too_low``,
    ``out_of_stock``, ``limit_reached``, ``not_available_now``."""


class MemberRewards(_Body):
    member_id: str
    available_points: int
    segments: list[str]
    """The program's segments the member is in now."""
    items: list[MemberReward]


class RewardIssue(_Body):
    id: str
    member_id: str
    reward: str
    redemption_id: str
    status: str
    fulfilment: str | None
    """Experience rewards: ``pending``, ``processing``, ``shipped`` or ``fulfilled``."""
    code: str | None
    """A coupon's code: in full only in the answer that issued it."""
    code_hint: str | None
    created_at: str
    expires_at: str | None
    used_at: str | None
    used_reference: str | None
    cancelled_at: str | None
    value_minor: int | None = None
    """A gift card's value, fixed when it was issued."""
    remaining_minor: int | None = None
    """What remains of a gift card: its value less what its uses took."""
    taken_minor: int | None = None
    """A gift card use: what it took."""
    returned_minor: int | None = None
    """A cancelled gift card use: what it gave back."""
    points: int | None = None
    points_returned: int | None = None
    balance: BalanceOut | None = None


class CouponCheck(_Body):
    valid: bool
    reasons: list[dict[str, Any]]
    discount_minor: int
    coupon: RewardIssue
    reward: RewardView


class TransferOut(_Body):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    entry_id: str
    from_: str = Field(alias="from")
    to: str
    points: int
    reason: str | None
    created_at: str
    from_balance: BalanceOut
    to_balance: BalanceOut
