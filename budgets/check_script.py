"""The check script's interface: what `budgets/lua/check.lua` is sent and what it answers.

`script_args` is the one place its ARGV is built (the keys included), `decode_reply` the one
place its reply is read; `Outcome` names the reply's first element on both sides (the Lua
declares the same numbers). The script's header documents the same layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from budgets import counters
from budgets import redis as bredis
from budgets.config import RateLimitSpec
from budgets.reservations import redis_hold_key

_CHECK = bredis.script_file("check")


class Outcome(IntEnum):
    """The script's answer, the first element of its reply (same numbers in check.lua)."""

    ALLOWED = 0
    STOPPED = 1  # an emergency stop (the tenant's or the global one) is open
    RATE_LIMITED = 2
    OVER_BUDGET = 3  # a hard budget would be passed
    UNTRUSTED = 4  # the counters are not rebuilt since Redis started: ask PostgreSQL


@dataclass(frozen=True)
class ScriptBudget:
    """One budget that applies to the call, as the script needs it."""

    limit_nanos: int
    hard: bool
    counter_field: str  # the field of the day/week/month hashes (see budgets.counters)
    hold_name: str  # see budgets.reservations.hold_name
    buckets: tuple[str, ...]  # the hashes whose sum is the window's spend


@dataclass(frozen=True)
class CheckScriptCall:
    """Everything the script is told about one check."""

    tenant_id: int
    now_ms: int  # epoch ms, the app's clock (stops and windows are compared with it)
    estimate_tokens: int  # input + output, counted by token rate limits
    estimate_nanos: int
    reserve: bool
    reservation_id: str  # read only to reserve
    reservation_seconds: int  # how long a reservation holds
    event_id: str  # the usage event that will settle the reservation ('' for none)
    rate_limits: Sequence[tuple[RateLimitSpec, str]]  # (limit, caller identity)
    budgets: Sequence[ScriptBudget]


def script_args(call: CheckScriptCall) -> list[Any]:
    """The script's ARGV, in the order its header documents."""
    tenant_id = call.tenant_id
    prefix = f"cm:{{{tenant_id}}}"
    args: list[Any] = [
        call.now_ms,
        counters.stop_key(tenant_id),
        counters.stop_key(None),
        counters.ok_key(tenant_id),
        len(call.rate_limits),
        call.estimate_tokens,
    ]
    for spec, ident in call.rate_limits:
        args += [
            f"{prefix}:rl:{spec.id}:{ident}",
            spec.window_seconds * 1000,
            spec.max_requests if spec.max_requests is not None else -1,
            spec.max_tokens if spec.max_tokens is not None else -1,
        ]
    ttl_s = call.reservation_seconds
    args += [
        "1" if call.reserve else "0",
        call.reservation_id,
        call.estimate_nanos,
        call.now_ms + ttl_s * 1000,
        (ttl_s + 3600) * 1000,
        prefix,
        call.event_id,
        len(call.budgets),
    ]
    for budget in call.budgets:
        args += [
            budget.limit_nanos,
            "1" if budget.hard else "0",
            budget.counter_field,
            redis_hold_key(tenant_id, budget.hold_name),
            len(budget.buckets),
        ]
        args += [counters.bucket_key(tenant_id, bucket) for bucket in budget.buckets]
    return args


@dataclass(frozen=True)
class RateLimitFigures:
    """A rate limit as the script measured it (sliding window)."""

    index: int  # 1-based, into CheckScriptCall.rate_limits
    kind: str  # requests | tokens
    limit: int
    used_milli: int  # used (the previous window weighted by its overlap) * 1000
    window_ms: int
    into_ms: int  # ms into the current window
    previous: int  # the previous window's count (0 when not sent)


@dataclass(frozen=True)
class ScriptReply:
    outcome: Outcome
    stop: str = ""  # STOPPED: the stop's value, "<expiry ms>|<reason>"
    reserved: bool = False  # ALLOWED: the reservation is held
    # (spent, reserved) nano-USD per budget, in order; None when the counters were not
    # trusted (STOPPED only: the figures must come from PostgreSQL).
    figures: tuple[tuple[int, int], ...] | None = None
    # RATE_LIMITED: the limit hit; ALLOWED and OVER_BUDGET: the tightest request limit, if any.
    rate_limit: RateLimitFigures | None = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(values: Sequence[Any]) -> tuple[tuple[int, int], ...]:
    return tuple((int(values[n]), int(values[n + 1])) for n in range(0, len(values), 2))


def decode_reply(reply: Sequence[Any], n_budgets: int) -> ScriptReply:
    """The script's reply as named fields (layouts in check.lua's header)."""
    outcome = Outcome(int(reply[0]))
    if outcome == Outcome.UNTRUSTED:
        return ScriptReply(outcome)
    if outcome == Outcome.STOPPED:
        rest = reply[2:]
        figures = _pairs(rest) if len(rest) == 2 * n_budgets else None
        return ScriptReply(outcome, stop=_text(reply[1]), figures=figures)
    if outcome == Outcome.RATE_LIMITED:
        index, kind, limit, used_milli, window_ms, into_ms, previous = reply[1:8]
        hit = RateLimitFigures(
            index=int(index),
            kind=_text(kind),
            limit=int(limit),
            used_milli=int(used_milli),
            window_ms=int(window_ms),
            into_ms=int(into_ms),
            previous=int(previous),
        )
        return ScriptReply(outcome, rate_limit=hit)
    end = 2 + 2 * n_budgets
    tightest = None
    if len(reply) > end:
        index, limit, used_milli, window_ms, into_ms = (int(v) for v in reply[end:])
        tightest = RateLimitFigures(index, "requests", limit, used_milli, window_ms, into_ms, 0)
    return ScriptReply(
        outcome,
        reserved=bool(int(reply[1])),
        figures=_pairs(reply[2:end]),
        rate_limit=tightest,
    )


def run_check_script(r: Any, call: CheckScriptCall) -> ScriptReply:
    """Run the check atomically in Redis (raises `budgets.redis.RedisError`)."""
    return decode_reply(_CHECK(r, script_args(call)), len(call.budgets))
