"""Domain errors. They describe what went wrong in business terms and know nothing about HTTP;
the API maps each to a status and a stable ``code`` in one table."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error a use case raises on purpose."""

    code: str = "domain_error"

    def __init__(self, detail: str, **context: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.context: dict[str, Any] = context


class NotFound(DomainError):
    code = "not_found"


class ProgramNotFound(NotFound):
    code = "program_not_found"

    def __init__(self, program_id: str) -> None:
        super().__init__(f"Program {program_id!r} does not exist.", program_id=program_id)


class MemberNotFound(NotFound):
    code = "member_not_found"

    def __init__(self, member_ref: str) -> None:
        super().__init__(
            f"Member {member_ref!r} does not exist in this program.", member=member_ref
        )


class TiersNotConfigured(NotFound):
    code = "tiers_not_configured"

    def __init__(self, program_id: str) -> None:
        super().__init__(
            f"Program {program_id!r} has no tiers; add a 'tiers' section to its document.",
            program_id=program_id,
        )


class MembershipNotFound(NotFound):
    code = "membership_not_found"

    def __init__(self, membership_id: str) -> None:
        super().__init__(
            f"Membership {membership_id!r} does not exist in this program.",
            membership_id=membership_id,
        )


class HoldNotFound(NotFound):
    code = "hold_not_found"

    def __init__(self, hold_id: str) -> None:
        super().__init__(f"Hold {hold_id!r} does not exist in this program.", hold_id=hold_id)


class UnknownReward(NotFound):
    code = "reward_not_found"

    def __init__(self, reward_id: str) -> None:
        super().__init__(
            f"Reward {reward_id!r} is not in this program's catalog.", reward=reward_id
        )


class RewardIssueNotFound(NotFound):
    code = "reward_issue_not_found"

    def __init__(self, issue_id: str) -> None:
        super().__init__(f"Issued reward {issue_id!r} does not exist.", issue_id=issue_id)


class CouponNotFound(NotFound):
    code = "coupon_not_found"

    def __init__(self) -> None:
        super().__init__("No coupon with this code in this program.")


class GiftCardUseNotFound(NotFound):
    code = "gift_card_use_not_found"

    def __init__(self, order_reference: str) -> None:
        super().__init__(
            f"This gift card was not used for order {order_reference!r}.",
            order_reference=order_reference,
        )


class OrderNotFound(NotFound):
    code = "order_not_found"

    def __init__(self, order_id: str) -> None:
        super().__init__(
            f"No purchase with order id {order_id!r} was recorded for this program.",
            order_id=order_id,
        )


class RedemptionNotFound(NotFound):
    code = "redemption_not_found"

    def __init__(self, redemption_id: str) -> None:
        super().__init__(
            f"Redemption {redemption_id!r} does not exist.", redemption_id=redemption_id
        )


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"API key {key_id!r} does not exist.", key_id=key_id)


class Conflict(DomainError):
    code = "conflict"


class HoldNotOpen(Conflict):
    code = "hold_not_open"

    def __init__(self, hold_id: str, *, status: str) -> None:
        super().__init__(
            f"Hold {hold_id!r} is {status}; only a held hold can be captured or released.",
            hold_id=hold_id,
            hold_status=status,
        )


class HoldExpired(Conflict):
    code = "hold_expired"

    def __init__(self, hold_id: str, *, expires_at: str) -> None:
        super().__init__(
            f"Hold {hold_id!r} expired at {expires_at}; its points are being given back. "
            "Reserve again.",
            hold_id=hold_id,
            expires_at=expires_at,
        )


class CouponNotUsable(Conflict):
    code = "coupon_not_usable"

    def __init__(self, *, status: str, used_at: Any) -> None:
        super().__init__(
            f"This coupon is {status}; it can't be used or cancelled.",
            coupon_status=status,
            used_at=used_at.isoformat() if used_at else None,
        )


class GiftCardSpent(Conflict):
    code = "gift_card_spent"

    def __init__(self, *, spent_minor: int) -> None:
        super().__init__(
            f"{spent_minor} of this gift card's value is spent; it can't be cancelled for its "
            "points until those uses are cancelled.",
            spent_minor=spent_minor,
        )


class MembershipExists(Conflict):
    code = "membership_exists"

    def __init__(self, plan: str) -> None:
        super().__init__(
            f"The member already has a membership of plan {plan!r} that is in force; renew it "
            "with a payment instead.",
            plan=plan,
        )


class MemberAlreadyExists(Conflict):
    code = "member_already_exists"

    def __init__(self, external_id: str, member_id: str) -> None:
        super().__init__(
            f"A member with external id {external_id!r} is already enrolled.",
            external_id=external_id,
            member_id=member_id,
        )


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency key {key!r} was already used with a different request.", key=key
        )


class RedemptionAlreadyCancelled(Conflict):
    code = "redemption_already_cancelled"

    def __init__(self, redemption_id: str) -> None:
        super().__init__(
            f"Redemption {redemption_id!r} was already cancelled.", redemption_id=redemption_id
        )


class ProgramVersionConflict(Conflict):
    code = "program_version_conflict"

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(
            f"The program is at version {current}, not {expected}; reload it and retry.",
            expected_version=expected,
            current_version=current,
        )


class DraftAlreadyPublished(Conflict):
    code = "draft_already_published"

    def __init__(self, draft_id: str, published_version: int) -> None:
        super().__init__(
            f"Draft {draft_id!r} was already published as version {published_version}.",
            draft_id=draft_id,
            published_version=published_version,
        )


class Unprocessable(DomainError):
    code = "unprocessable"


class UnknownTier(Unprocessable):
    code = "unknown_tier"

    def __init__(self, tier: str, *, known: list[str]) -> None:
        super().__init__(
            f"Tier {tier!r} is not one of the program's tiers ({', '.join(known)}).",
            tier=tier,
            known_tiers=known,
        )


class UnknownTierSet(Unprocessable):
    code = "unknown_tier_set"

    def __init__(self, tier_set: str, *, known: list[str]) -> None:
        super().__init__(
            f"Tier set {tier_set!r} is not one of the program's tier sets ({', '.join(known)}).",
            tier_set=tier_set,
            known_tier_sets=known,
        )


class NotFulfilled(Unprocessable):
    code = "not_fulfilled"

    def __init__(self, issue_id: str) -> None:
        super().__init__(
            f"Issued reward {issue_id!r} is not one the merchant fulfils (only experience "
            "rewards have a fulfilment status).",
            issue_id=issue_id,
        )


class CouponCodeInvalid(Unprocessable):
    code = "coupon_code_invalid"

    def __init__(self) -> None:
        super().__init__(
            "This is not a valid coupon code: a character is mistyped or missing (codes look "
            "like 7K2M-Q9XD-4TPW-R)."
        )


class RewardNotAvailable(Unprocessable):
    code = "reward_not_available"

    def __init__(self, reward_id: str, *, reasons: list[dict[str, Any]]) -> None:
        super().__init__(
            f"Reward {reward_id!r} can't be redeemed now: "
            + ", ".join(r["code"] for r in reasons)
            + ".",
            reward=reward_id,
            reasons=reasons,
        )


class GiftCardBalanceShort(Unprocessable):
    code = "gift_card_balance_short"

    def __init__(self, *, amount_minor: int, remaining_minor: int) -> None:
        super().__init__(
            f"{amount_minor} was asked of this gift card but only {remaining_minor} remains.",
            amount_minor=amount_minor,
            remaining_minor=remaining_minor,
        )


class GiftCardUseIncomplete(Unprocessable):
    code = "gift_card_use_incomplete"

    def __init__(self) -> None:
        super().__init__(
            "This code is a gift card: say how much to take in 'amount_minor', and the order "
            "in 'order_reference'."
        )


class NotAGiftCard(Unprocessable):
    code = "not_a_gift_card"

    def __init__(self) -> None:
        super().__init__(
            "This code is a single-use coupon, not a gift card: it is used whole, without "
            "'amount_minor', and a use of it can't be cancelled."
        )


class TransferRefused(Unprocessable):
    code = "transfer_refused"

    def __init__(self, reason: str, **context: Any) -> None:
        texts = {
            "transfers_disabled": "This program doesn't allow members to transfer points.",
            "same_member": "A member can't transfer points to themselves.",
            "over_transfer_limit": "The transfer is over the program's limit per transfer.",
            "over_monthly_limit": "The transfer would pass the program's monthly limit.",
        }
        super().__init__(texts[reason], reason=reason, **context)


class UnknownPlan(Unprocessable):
    code = "unknown_plan"

    def __init__(self, plan: str, *, known: list[str]) -> None:
        super().__init__(
            f"Plan {plan!r} is not one of the program's plans ({', '.join(known) or 'none'}).",
            plan=plan,
            known_plans=known,
        )


class PaymentRequired(Unprocessable):
    code = "payment_required"

    def __init__(self, plan: str, *, fee_minor: int) -> None:
        super().__init__(
            f"Plan {plan!r} starts with a paid period: send the fee's 'payment_reference'.",
            plan=plan,
            fee_minor=fee_minor,
        )


class FeeMismatch(Unprocessable):
    code = "fee_mismatch"

    def __init__(self, plan: str, *, fee_minor: int, amount_minor: int) -> None:
        super().__init__(
            f"Plan {plan!r} costs {fee_minor} a period; the payment says {amount_minor}.",
            plan=plan,
            fee_minor=fee_minor,
            amount_minor=amount_minor,
        )


class InsufficientPoints(Unprocessable):
    code = "insufficient_points"

    def __init__(self, *, points_required: int, points_available: int) -> None:
        super().__init__(
            f"{points_required} points are required but only {points_available} are available.",
            points_required=points_required,
            points_available=points_available,
        )


class InsufficientCashback(Unprocessable):
    code = "insufficient_cashback"

    def __init__(self, *, amount_required_minor: int, amount_available_minor: int) -> None:
        super().__init__(
            f"The member has {amount_available_minor} of cashback (minor units) to spend; "
            f"{amount_required_minor} was asked for.",
            amount_required_minor=amount_required_minor,
            amount_available_minor=amount_available_minor,
        )


class PaymentNotAllowed(Unprocessable):
    """Paying part of an order with points or cashback breaks one of the program's checkout
    rules; ``reason`` says which and ``limit`` gives the number it was checked against."""

    code = "payment_not_allowed"

    def __init__(self, detail: str, *, wallet: str, reason: str, limit: int | None) -> None:
        super().__init__(detail, wallet=wallet, reason=reason, limit=limit)


class CurrencyMismatch(Unprocessable):
    code = "currency_mismatch"

    def __init__(self, *, expected: str, received: str) -> None:
        super().__init__(
            f"This program runs in {expected}; the event is in {received}.",
            expected_currency=expected,
            received_currency=received,
        )


class ReturnExceedsPurchase(Unprocessable):
    code = "return_exceeds_purchase"

    def __init__(
        self, *, order_id: str, line: str, quantity_returnable: int, requested: int
    ) -> None:
        super().__init__(
            f"Line {line!r} of order {order_id!r} has {quantity_returnable} returnable units; "
            f"{requested} were returned.",
            order_id=order_id,
            line=line,
            quantity_returnable=quantity_returnable,
            quantity_requested=requested,
        )


class UnknownOrderLine(Unprocessable):
    code = "unknown_order_line"

    def __init__(self, *, order_id: str, line: str) -> None:
        super().__init__(f"Order {order_id!r} has no line {line!r}.", order_id=order_id, line=line)


class MemberMismatch(Unprocessable):
    code = "member_mismatch"

    def __init__(self, *, order_id: str) -> None:
        super().__init__(
            f"Order {order_id!r} belongs to a different member than the one named in the return.",
            order_id=order_id,
        )


class InvalidProgramDocument(Unprocessable):
    code = "invalid_program_document"

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail, errors=errors or [])


class EventRejected(Unprocessable):
    code = "event_rejected"


class ExpiryInPast(Unprocessable):
    code = "expiry_in_past"

    def __init__(self, *, expires_at: str) -> None:
        super().__init__(f"expires_at {expires_at} is not in the future.", expires_at=expires_at)


class LimitExceeded(Unprocessable):
    """A documented maximum would be exceeded by the result of the request."""

    code = "limit_exceeded"


class TooManyAttempts(DomainError):
    """Too many failed attempts in a short time (429, with ``Retry-After``)."""

    code = "too_many_attempts"

    def __init__(self, *, retry_after_s: int, limit: int, window_s: int) -> None:
        super().__init__(
            f"More than {limit} unknown or mistyped coupon codes in {window_s} seconds from "
            "this key; try again later.",
            retry_after_s=retry_after_s,
            limit=limit,
            window_s=window_s,
        )
