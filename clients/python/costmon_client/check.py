"""The pre-flight check's answer (`POST /api/v1/check/`) as typed objects with exact amounts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from costmon_client.errors import (
    BudgetExceeded,
    CallDenied,
    CostmonUnavailable,
    EmergencyStopped,
    RateLimited,
)

UNREACHABLE = "costmon_unreachable"


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value)) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError):
        return None


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class BudgetStatus:
    """One budget the call falls under, with its spend this period (USD as Decimal)."""

    id: int | None
    name: str
    scope: str
    period: str
    limit_usd: Decimal | None
    used_usd: Decimal | None
    remaining_usd: Decimal | None
    percent: Decimal | None
    status: str
    resets_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BudgetStatus:
        return cls(
            id=data.get("id"),
            name=str(data.get("name", "")),
            scope=str(data.get("scope", "")),
            period=str(data.get("period", "")),
            limit_usd=_decimal(data.get("limit_usd")),
            used_usd=_decimal(data.get("used_usd")),
            remaining_usd=_decimal(data.get("remaining_usd")),
            percent=_decimal(data.get("percent")),
            status=str(data.get("status", "")),
            resets_at=_moment(data.get("resets_at")),
            raw=data,
        )


@dataclass(frozen=True)
class CheckResult:
    """costmon's answer to "may this call spend?".

    `unreachable` is True when costmon did not answer and `allowed` is the client's
    `on_unreachable` policy rather than costmon's decision.
    """

    allowed: bool
    reasons: list[str] = field(default_factory=list)
    budgets: list[BudgetStatus] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    suggested_model: str | None = None
    reservation_id: str | None = None
    estimated_cost_usd: Decimal | None = None
    retry_after: float | None = None
    unreachable: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __bool__(self) -> bool:
        return self.allowed

    @classmethod
    def from_json(cls, data: dict[str, Any], *, retry_after: float | None = None) -> CheckResult:
        return cls(
            allowed=bool(data.get("allowed")),
            reasons=[str(r) for r in data.get("reasons") or []],
            budgets=[
                BudgetStatus.from_json(b) for b in data.get("budgets") or [] if isinstance(b, dict)
            ],
            warnings=[w for w in data.get("warnings") or [] if isinstance(w, dict)],
            suggested_model=data.get("suggested_model") or None,
            reservation_id=data.get("reservation_id") or None,
            estimated_cost_usd=_decimal(data.get("estimated_cost_usd")),
            retry_after=retry_after,
            raw=data,
        )

    @classmethod
    def fallback(cls, *, allowed: bool, problem: str) -> CheckResult:
        """The answer the client gives itself when costmon cannot be asked."""
        return cls(
            allowed=allowed,
            reasons=[] if allowed else [UNREACHABLE],
            warnings=[{"code": UNREACHABLE, "message": problem}],
            unreachable=True,
        )

    def raise_if_denied(self) -> None:
        """Raise the CallDenied subclass that fits the first reason, when not allowed."""
        if self.allowed:
            return
        reasons = set(self.reasons)
        exc: type[CallDenied]
        if self.unreachable:
            exc = CostmonUnavailable
        elif "emergency_stop" in reasons:
            exc = EmergencyStopped
        elif "budget_exceeded" in reasons:
            exc = BudgetExceeded
        elif "rate_limited" in reasons:
            exc = RateLimited
        else:
            exc = CallDenied
        messages = [str(w.get("message")) for w in self.warnings if w.get("message")]
        if "budget_exceeded" in reasons:
            messages += [
                f"budget {b.name!r} ({b.period}): {b.used_usd} of {b.limit_usd} USD used"
                for b in self.budgets
                if b.raw.get("enforcement") == "hard"
            ]
        detail = "; ".join(messages) or ", ".join(self.reasons) or "denied"
        if self.suggested_model:
            detail += f" (suggested model: {self.suggested_model})"
        raise exc(f"costmon denied the call: {detail}", self)
