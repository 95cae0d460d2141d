"""One ingest batch's counter update as it is stored (`CounterUpdate.payload`) and the Redis
marker that says it was applied. `budgets.updates` writes and applies updates; a counter rebuild
(`budgets.counters`) absorbs the pending ones."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date


def marker_key(tenant_id: int, update_id: int) -> str:
    return f"cm:{{{tenant_id}}}:cu:{update_id}"


@dataclass
class Update:
    """One batch's amounts (nano-USD): per tenant-local day and counter field, per UTC day for
    the all-tenants hashes, and the reservations its events settle ("r"/"e", value pairs)."""

    days: dict[date, dict[str, int]] = field(default_factory=dict)
    utc_days: dict[date, dict[str, int]] = field(default_factory=dict)
    settle: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "d": {f"{d:%Y%m%d}": f for d, f in self.days.items()},
                "g": {f"{d:%Y%m%d}": f for d, f in self.utc_days.items()},
                "s": self.settle,
            },
            separators=(",", ":"),
        )

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
