"""What a pre-flight check is asked and what it answers (budgets.check builds the answer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from budgets.standing import BudgetState


@dataclass(frozen=True)
class CheckRequest:
    end_user: str = ""
    provider: str = ""
    model: str = ""
    operation: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    estimated_input_tokens: int = 0
    estimated_output_tokens: int = 0
    estimated_cost_usd: Decimal | None = None
    reserve: bool = False
    event_id: str = ""
    api_key_id: int | None = None
    client_ip: str = ""


@dataclass
class RateLimitHit:
    limit: int
    remaining: int
    reset_seconds: int
    retry_after: int
    kind: str  # requests | tokens
    scope: str


@dataclass
class CheckResult:
    allowed: bool
    reasons: list[str] = field(default_factory=list)
    budgets: list[BudgetState] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    suggested_model: str | None = None
    reservation_id: str | None = None
    rate_limited: RateLimitHit | None = None
    rate_limit: RateLimitHit | None = None  # the tightest limit that applied, for headers
    source: str = "redis"  # where spend was read: redis | database | none (nowhere)
    estimate_nanos: int = 0
    fail_mode: str | None = None  # closed | open: decided the call, spend being unknown

    def refuse(self, reason: str, warning: dict[str, Any] | None = None) -> None:
        self.allowed = False
        self.reasons.append(reason)
        if warning is not None:
            self.warnings.append(warning)
