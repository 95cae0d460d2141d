"""One ingest batch's counter update as it is stored (`CounterUpdate.payload`) and the Redis
marker that says it was applied. `budgets.updates` writes and applies updates; a counter rebuild
(`budgets.counters`) absorbs the pending ones."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

import msgspec

from budgets.periods import buckets_of_day

SEP = "\x00"  # see record.lua
# How long a marker outlives its update's row, once the sweeper or a rebuild is done with it:
# a batch's own update may still come after a rebuild absorbed it (ingest's lock ends with
# its commit), and must find the marker then.
MARKER_KEEP_SECONDS = 600


def marker_key(tenant_id: int, update_id: int) -> str:
    return f"cm:{{{tenant_id}}}:cu:{update_id}"


def bucket_key(tenant_id: int, bucket: str) -> str:
    return f"cm:{{{tenant_id}}}:{bucket}"


def global_day_key(day: date) -> str:
    return f"cm:global:d:{day:%Y%m%d}"


def packed(pairs: Iterable[tuple[str, object]]) -> str:
    """Fields and amounts as the scripts read them: "field\0amount\0..." (ingest refuses NUL
    in every name, and one long argument costs redis-py a fraction of what many short do)."""
    return "".join(f"{name}{SEP}{amount}{SEP}" for name, amount in pairs)


@dataclass
class Update:
    """One batch's amounts (nano-USD): per tenant-local day and counter field, per UTC day for
    the all-tenants hashes, and the reservations its events settle ("r"/"e", value pairs)."""

    days: dict[date, dict[str, int]] = field(default_factory=dict)
    utc_days: dict[date, dict[str, int]] = field(default_factory=dict)
    settle: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        # msgspec: compact JSON as json.dumps(separators=(",", ":")) writes it (non-ASCII as
        # UTF-8 rather than escaped; `from_json` reads both), a tenth of its time: one a batch.
        return msgspec.json.encode(
            {
                "d": {f"{d:%Y%m%d}": f for d, f in self.days.items()},
                "g": {f"{d:%Y%m%d}": f for d, f in self.utc_days.items()},
                "s": self.settle,
            }
        ).decode()

    @classmethod
    def from_json(cls, text: str) -> Update:
        data = json.loads(text)

        def day(s: str) -> date:
            return date(int(s[:4]), int(s[4:6]), int(s[6:]))

        return cls(
            days={day(k): v for k, v in data["d"].items()},
            utc_days={day(k): v for k, v in data["g"].items()},
            settle=data["s"],
        )

    def reservation_ids(self) -> list[str]:
        return [v for k, v in zip(self.settle[::2], self.settle[1::2], strict=True) if k == "r"]

    def event_ids(self) -> list[str]:
        return [v for k, v in zip(self.settle[::2], self.settle[1::2], strict=True) if k == "e"]


def expand(tenant_id: int, update: Update) -> dict[str, dict[str, int]]:
    """The amounts per counter hash: each local day into its day, week and month hashes (hours
    only into the day), each UTC day into the all-tenants hash."""
    hashes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for day, fields in update.days.items():
        day_b, week_b, month_b = buckets_of_day(day)
        day_h = hashes[bucket_key(tenant_id, day_b)]
        week_h = hashes[bucket_key(tenant_id, week_b)]
        month_h = hashes[bucket_key(tenant_id, month_b)]
        for name, amount in fields.items():
            day_h[name] += amount
            if not name.startswith("h:"):
                week_h[name] += amount
                month_h[name] += amount
    for day, fields in update.utc_days.items():
        total = hashes[global_day_key(day)]
        for name, amount in fields.items():
            total[name] += amount
    return hashes


def hash_args(tenant_id: int, update: Update) -> list[str]:
    """The update's hashes as the scripts take them: n, then key, packed fields, per hash."""
    hashes = expand(tenant_id, update)
    args = [str(len(hashes))]
    for key, fields in hashes.items():
        args += [key, packed(fields.items())]
    return args
