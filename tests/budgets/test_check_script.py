"""The check script's interface: the ARGV layout check.lua reads, its outcome numbers, and how
its replies are decoded (pure; the script itself runs in tests/budgets/test_check.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from budgets.check_script import (
    CheckScriptCall,
    Outcome,
    RateLimitFigures,
    ScriptBudget,
    ScriptReply,
    decode_reply,
    script_args,
)
from budgets.config import RateLimitSpec

LUA = Path(__file__).resolve().parents[2] / "budgets" / "lua" / "check.lua"


def test_the_script_and_python_number_the_outcomes_alike():
    line = re.search(r"^local (ALLOWED.*) = (.*)$", LUA.read_text(), re.M)
    assert line is not None
    names = [n.strip() for n in line.group(1).split(",")]
    numbers = [int(n) for n in line.group(2).split(",")]
    assert dict(zip(names, numbers, strict=True)) == {o.name: o.value for o in Outcome}


def test_the_arguments_are_laid_out_as_the_script_reads_them():
    call = CheckScriptCall(
        tenant_id=42,
        now_ms=1_700_000_000_000,
        estimate_tokens=1200,
        estimate_nanos=5_000_000,
        reserve=True,
        reservation_id="abc",
        reservation_seconds=300,
        event_id="ev-1",
        rate_limits=[(RateLimitSpec(7, "end_user", "", 60, 100, None), "alice")],
        budgets=[ScriptBudget(10**9, True, "u:alice", "3:20261101:alice", ("m:202611",))],
    )
    assert script_args(call) == [
        1_700_000_000_000,
        "cm:{42}:estop",
        "cm:global:estop",
        "cm:{42}:ok",
        1,
        1200,
        "cm:{42}:rl:7:alice",
        60_000,
        100,
        -1,
        "1",
        "abc",
        5_000_000,
        1_700_000_300_000,
        3_900_000,
        "cm:{42}",
        "ev-1",
        1,
        10**9,
        "1",
        "u:alice",
        "cm:{42}:r:3:20261101:alice",
        1,
        "cm:{42}:m:202611",
    ]


@pytest.mark.parametrize(
    ("reply", "decoded"),
    [
        ([4], ScriptReply(Outcome.UNTRUSTED)),
        (
            [0, 1, 30, 5, 2, 100, 2500, 60000, 1000],
            ScriptReply(
                Outcome.ALLOWED,
                reserved=True,
                figures=((30, 5),),
                rate_limit=RateLimitFigures(2, "requests", 100, 2500, 60000, 1000, 0),
            ),
        ),
        ([3, 0, 90, 20], ScriptReply(Outcome.OVER_BUDGET, figures=((90, 20),))),
        (
            [1, b"1700000000000|runaway", 30, 5],
            ScriptReply(Outcome.STOPPED, stop="1700000000000|runaway", figures=((30, 5),)),
        ),
        # Not trusted: no figures, PostgreSQL supplies them.
        ([1, b"1700000000000|runaway"], ScriptReply(Outcome.STOPPED, stop="1700000000000|runaway")),
        (
            [2, 1, b"tokens", 1000, 999500, 60000, 30000, 400],
            ScriptReply(
                Outcome.RATE_LIMITED,
                rate_limit=RateLimitFigures(1, "tokens", 1000, 999500, 60000, 30000, 400),
            ),
        ),
    ],
)
def test_each_reply_is_decoded_into_named_fields(reply, decoded):
    assert decode_reply(reply, n_budgets=1) == decoded
