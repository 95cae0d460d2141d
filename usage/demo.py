"""Demo usage: a realistic, deterministic stream of `EventIn` for one tenant.

Pure functions, no database: `seed_demo` records the stream through `usage_record_batch`, and a
bulk loader can consume the same stream. Events come out in time order with ids derived from
(seed, stream, index), so generating again with the same arguments gives the same ids and
re-recording them only reports duplicates.

What makes it look like a real product: a few operations each with its usual models and token
sizes, ~300 end users of whom a few do most of the calls, working hours and weekdays busier than
nights and weekends, prompt-cache reads on Anthropic and OpenAI, application cache hits, errors,
a fine-tuned model missing from the price catalog, and one day when an agent loop ran away.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from usage.ingest import EventIn

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class ModelSpec:
    provider: str
    model: str
    first_token_ms: int
    ms_per_output_token: float
    # Share of the output spent on thinking (reported as reasoning_tokens, included in output).
    reasoning_share: float = 0.0


@dataclass(frozen=True)
class OperationSpec:
    name: str
    weight: float  # share of calls
    models: tuple[tuple[str, float], ...]  # (model name, share of the operation's calls)
    tokens: tuple[int, int]  # median input and output tokens
    team: str
    app_cache_rate: float  # served from the application's own cache
    # Share of calls that read a cached prompt prefix, and the cached part of the input (min, max).
    prompt_cache: tuple[float, tuple[float, float]]
    sessions: tuple[int, int] | None = None  # calls per session (min, max); None: no sessions


MODELS = {
    m.model: m
    for m in (
        ModelSpec("anthropic", "claude-sonnet-4-5", 650, 18),
        ModelSpec("anthropic", "claude-haiku-4-5", 350, 8),
        ModelSpec("openai", "gpt-4o", 450, 12),
        ModelSpec("openai", "gpt-4o-mini", 300, 7),
        ModelSpec("openai", "gpt-4.1-mini", 300, 7),
        ModelSpec("openai", "text-embedding-3-small", 60, 0),
        ModelSpec("google", "gemini-2.5-flash", 400, 4, reasoning_share=0.3),
        ModelSpec("mistral", "mistral-small", 250, 6),
        # The support team's fine-tune on a hosted endpoint: not in any price catalog.
        ModelSpec("fireworks", "llama-3.3-70b-support-ft", 500, 10),
    )
}
UNPRICED_MODEL = "llama-3.3-70b-support-ft"
UNPRICED_EVERY = 250  # one event in this many uses it

OPERATIONS = (
    OperationSpec(
        "chat",
        0.34,
        (
            ("claude-sonnet-4-5", 0.25),
            ("claude-haiku-4-5", 0.25),
            ("gpt-4o", 0.15),
            ("gpt-4o-mini", 0.25),
            ("gemini-2.5-flash", 0.10),
        ),
        (2200, 320),
        "support",
        0.06,
        (0.6, (0.4, 0.85)),
        sessions=(2, 12),
    ),
    OperationSpec(
        "summarize",
        0.10,
        (("claude-haiku-4-5", 0.40), ("gpt-4.1-mini", 0.35), ("gemini-2.5-flash", 0.25)),
        (7000, 450),
        "docs",
        0.05,
        (0.1, (0.1, 0.3)),
    ),
    OperationSpec(
        "classify",
        0.16,
        (("gpt-4o-mini", 0.60), ("mistral-small", 0.30), ("claude-haiku-4-5", 0.10)),
        (700, 12),
        "trust-safety",
        0.15,
        (0.3, (0.5, 0.8)),
    ),
    OperationSpec(
        "embed",
        0.20,
        (("text-embedding-3-small", 1.0),),
        (600, 0),
        "search",
        0.12,
        (0.0, (0.0, 0.0)),
    ),
    OperationSpec(
        "rag-answer",
        0.12,
        (
            ("claude-sonnet-4-5", 0.35),
            ("gpt-4o", 0.25),
            ("gpt-4.1-mini", 0.25),
            ("gemini-2.5-flash", 0.15),
        ),
        (5200, 420),
        "search",
        0.09,
        (0.35, (0.2, 0.5)),
        sessions=(1, 5),
    ),
    OperationSpec(
        "agent-step",
        0.08,
        (("claude-sonnet-4-5", 0.65), ("gpt-4o", 0.25), ("claude-haiku-4-5", 0.10)),
        (9000, 260),
        "automation",
        0.0,
        (0.8, (0.6, 0.9)),
        sessions=(5, 30),
    ),
)
_OPS = {op.name: op for op in OPERATIONS}

ERROR_RATE = 0.015
SPIKE_FACTOR = 3.0  # the spike day has this many times its usual traffic
SPIKE_AGENT_SHARE = 0.6  # of the spike day's calls, this share is the runaway agent
STAGING_SHARE = 0.04
INDEXER = "svc-indexer"  # the embedding pipeline's service account

# Relative traffic by local hour of day and by weekday (Monday first).
HOUR_WEIGHTS = (
    0.12,
    0.10,
    0.08,
    0.08,
    0.10,
    0.15,
    0.25,
    0.45,
    0.75,
    1.00,
    1.05,
    1.00,
    0.75,
    0.90,
    1.00,
    1.00,
    0.90,
    0.70,
    0.50,
    0.40,
    0.35,
    0.30,
    0.22,
    0.15,
)
WEEKDAY_WEIGHTS = (1.0, 1.05, 1.05, 1.0, 0.9, 0.3, 0.25)


def event_id(*, seed: int, stream: int, index: int) -> str:
    return f"demo-{seed}-{stream}-{index:07d}"


def end_users(count: int) -> list[str]:
    return [f"user-{i:03d}" for i in range(1, count + 1)]


def zipf_cum_weights(count: int, exponent: float = 1.0) -> list[float]:
    """Cumulative weights of a heavy-tailed popularity: rank k gets 1 / k**exponent."""
    return list(itertools.accumulate(1 / k**exponent for k in range(1, count + 1)))


def hour_slots(*, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end) cut at whole UTC hours; the first and last slots may be partial."""
    bounds = [start]
    moment = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + HOUR
    while moment < end:
        bounds.append(moment)
        moment += HOUR
    bounds.append(end)
    return list(itertools.pairwise(bounds))


def spike_date(rng: random.Random, *, start: datetime, end: datetime, tz: tzinfo) -> date:
    """A weekday that lies wholly inside the range if there is one."""
    first, last = start.astimezone(tz).date(), end.astimezone(tz).date()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    whole = [d for d in days if first < d < last] or days
    weekdays = [d for d in whole if d.weekday() < 5] or whole
    return rng.choice(weekdays)


def allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` into whole counts proportional to `weights` (largest remainder)."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    counts = [math.floor(x) for x in exact]
    short = total - sum(counts)
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[:short]:
        counts[i] += 1
    return counts


def _lognormal(rng: random.Random, median: float, sigma: float) -> int:
    return max(1, round(rng.lognormvariate(math.log(median), sigma)))


def _pick(rng: random.Random, choices: Sequence[tuple[str, float]]) -> str:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


@dataclass
class _Call:
    op: OperationSpec
    model: ModelSpec
    user: str
    session: str = ""
    runaway: bool = False  # the spike day's agent loop
    unpriced: bool = False  # the fine-tune: never an error or a cache hit, so always unpriced


def demo_events(
    *,
    count: int,
    days: int,
    end: datetime,
    seed: int = 42,
    stream: int = 0,
    users: int = 300,
    tz: tzinfo = UTC,
) -> Iterator[EventIn]:
    """`count` events spread over the `days` before `end`, oldest first.

    `stream` tells tenants apart (demo, demo-2, ...): the same seed gives each its own data.
    Memory stays constant in `count`: events are produced hour by hour.
    """
    if count < 0 or days < 1 or users < 1:
        raise ValueError("count must be >= 0, days and users >= 1")
    rng = random.Random(f"costmon-demo:{seed}:{stream}")
    start = end - timedelta(days=days)
    slots = hour_slots(start=start, end=end)
    spike = spike_date(rng, start=start, end=end, tz=tz)
    day_noise: dict[date, float] = {}
    weights = []
    for i, (a, b) in enumerate(slots):
        local = (a + (b - a) / 2).astimezone(tz)
        day = local.date()
        if day not in day_noise:
            day_noise[day] = rng.lognormvariate(0, 0.12)
        w = HOUR_WEIGHTS[local.hour] * WEEKDAY_WEIGHTS[local.weekday()] * day_noise[day]
        w *= rng.lognormvariate(0, 0.2)  # hour-to-hour jitter
        w *= 1 + 0.2 * i / len(slots)  # the product is growing
        if day == spike:
            w *= SPIKE_FACTOR
        weights.append(w * (b - a).total_seconds() / 3600)
    per_slot = allocate(count, weights)

    names = end_users(users)
    rng.shuffle(names)  # the heaviest user is not user-001
    cum_users = zipf_cum_weights(users)
    runaway = names[min(2, users - 1)]
    runaway_session = f"sess-{rng.getrandbits(40):010x}"
    sessions: dict[tuple[str, str], tuple[str, int]] = {}
    op_names = [op.name for op in OPERATIONS]
    day_ops = list(itertools.accumulate(op.weight for op in OPERATIONS))
    # Re-indexing runs at night: embeddings are three times as frequent then.
    night_ops = list(
        itertools.accumulate(op.weight * (3 if op.name == "embed" else 1) for op in OPERATIONS)
    )

    def pick_user() -> str:
        return names[bisect.bisect(cum_users, rng.random() * cum_users[-1])]

    index = 0
    for (a, b), n in zip(slots, per_slot, strict=True):
        if not n:
            continue
        span_ms = max(1, int((b - a).total_seconds() * 1000))
        offsets = sorted(rng.randrange(span_ms) for _ in range(n))
        local = a.astimezone(tz)
        cum_ops = night_ops if local.hour < 6 else day_ops
        is_spike = local.date() == spike
        for offset in offsets:
            if index % UNPRICED_EVERY == 7:
                call = _Call(_OPS["chat"], MODELS[UNPRICED_MODEL], pick_user(), unpriced=True)
            elif is_spike and rng.random() < SPIKE_AGENT_SHARE:
                call = _Call(
                    _OPS["agent-step"],
                    MODELS["claude-sonnet-4-5"],
                    runaway,
                    session=runaway_session,
                    runaway=True,
                )
            else:
                op = _OPS[op_names[bisect.bisect(cum_ops, rng.random() * cum_ops[-1])]]
                model = MODELS[_pick(rng, op.models)]
                indexer = op.name == "embed" and rng.random() < 0.6
                call = _Call(op, model, INDEXER if indexer else pick_user())
            yield _event(
                rng,
                call,
                sessions=sessions,
                occurred_at=a + timedelta(milliseconds=offset),
                event_id=event_id(seed=seed, stream=stream, index=index),
            )
            index += 1


def _event(
    rng: random.Random,
    call: _Call,
    *,
    sessions: dict[tuple[str, str], tuple[str, int]],
    event_id: str,
    occurred_at: datetime,
) -> EventIn:
    op, model = call.op, call.model
    session = call.session
    if not session and op.sessions is not None and not call.unpriced:
        # Each user is in one conversation per operation at a time; it ends after a few calls.
        current, left = sessions.get((call.user, op.name), ("", 0))
        if not left:
            current, left = f"sess-{rng.getrandbits(40):010x}", rng.randint(*op.sessions)
        sessions[(call.user, op.name)] = (current, left - 1)
        session = current

    input_tokens = _lognormal(rng, op.tokens[0], 0.6)
    output_tokens = _lognormal(rng, op.tokens[1], 0.7) if op.tokens[1] else 0
    cached = write = reasoning = 0
    is_error = not call.unpriced and rng.random() < (0.05 if call.runaway else ERROR_RATE)
    cache_hit = not call.unpriced and not is_error and rng.random() < op.app_cache_rate
    if is_error:
        output_tokens = 0
        if rng.random() < 0.7:
            input_tokens = 0  # rejected before any work: rate limit, overload
            latency = rng.randint(40, 400)
        else:
            latency = rng.randint(30_000, 60_000)  # timed out after reading the prompt
    elif cache_hit:
        latency = rng.randint(2, 40)  # tokens are those of the stored answer
    else:
        rate, share = op.prompt_cache
        if model.provider in ("anthropic", "openai") and rng.random() < rate:
            cached = int(input_tokens * rng.uniform(*share))
            if model.provider == "anthropic" and rng.random() < 0.15:
                write = int((input_tokens - cached) * rng.uniform(0.2, 0.6))
        reasoning = int(output_tokens * model.reasoning_share * rng.uniform(0.5, 1.5))
        reasoning = min(reasoning, output_tokens)
        if model.ms_per_output_token:
            ms = model.first_token_ms + output_tokens * model.ms_per_output_token
        else:
            ms = model.first_token_ms + input_tokens / 50  # embeddings: time grows with input
        latency = max(5, round(ms * rng.lognormvariate(0, 0.25)))
    env = "staging" if rng.random() < STAGING_SHARE else "prod"
    return EventIn(
        event_id=event_id,
        occurred_at=occurred_at,
        provider=model.provider,
        model=model.model,
        operation=op.name,
        end_user=call.user,
        session_id=session,
        tags={"team": op.team, "env": env},
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached,
        cache_write_tokens=write,
        reasoning_tokens=reasoning,
        cost_usd=None,
        latency_ms=latency,
        is_error=is_error,
        cache_hit=cache_hit,
    )


def batches(events: Iterable[EventIn], size: int) -> Iterator[list[EventIn]]:
    iterator = iter(events)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def as_payload(event: EventIn) -> dict[str, Any]:
    """A generated event as a client sends it to `POST /api/v1/usage/` (what the benchmark's
    clients send; `usage.ingest.parse_batch` reads it back to the same event)."""
    return {
        "event_id": event.event_id,
        "occurred_at": event.occurred_at.isoformat(),
        "provider": event.provider,
        "model": event.model,
        "operation": event.operation,
        "end_user": event.end_user,
        "session_id": event.session_id,
        "tags": event.tags,
        "input_tokens": event.input_tokens,
        "output_tokens": event.output_tokens,
        "cached_input_tokens": event.cached_input_tokens,
        "cache_write_tokens": event.cache_write_tokens,
        "reasoning_tokens": event.reasoning_tokens,
        "latency_ms": event.latency_ms,
        "status": "error" if event.is_error else "success",
        "cache_hit": event.cache_hit,
    }
