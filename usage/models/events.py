"""Usage as stored: the tenant's dictionary of names, raw events, and the hourly rollups.

Money is stored as integer nano-dollars (1 USD = 10^9) so that sums are exact on every database.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models import Q

from costmon.core.models import Tenant
from costmon.core.money import nanos_to_usd
from costmon.core.tenancy import TenantScopedManager
from usage.models.catalog import ServiceTier
from usage.pricing import Usage


class Dimension(models.Model):
    """A tenant's dictionary of names (providers, models, operations, end users, sessions).

    Events and rollups store the integer id instead of the text, which keeps a raw event row
    small and makes grouping cheap.
    """

    class Kind(models.IntegerChoices):
        PROVIDER = 1
        MODEL = 2
        OPERATION = 3
        END_USER = 4
        SESSION = 5

    # 32-bit: five columns of every event and four of every rollup row refer to it.
    id = models.AutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    kind = models.SmallIntegerField(choices=Kind.choices)
    value = models.CharField(max_length=255)

    objects = TenantScopedManager["Dimension"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "kind", "value"], name="dimension_unique")
        ]

    def __str__(self) -> str:
        return self.value


def dictionary_reference(**options: Any) -> models.ForeignKey[Any, Any]:
    """A reference to a dictionary entry (`Dimension`) from an event or a rollup row.

    No index of its own and no database constraint: checking the reference on every inserted
    row would cost more than the insert itself. Nothing is done on delete either: dictionary
    entries are only deleted together with their tenant, whose own cascade removes the events
    and rollups at the same time.
    """
    return models.ForeignKey(
        Dimension,
        on_delete=models.DO_NOTHING,
        related_name="+",
        db_index=False,
        db_constraint=False,
        **options,
    )


class ZeroAsNullIntegerField(models.IntegerField):  # type: ignore[type-arg]
    """A count stored as NULL when it is zero (a NULL costs a row nothing) and read as 0.

    Ingest and the bulk loader write NULL for 0 (`usage.rows.event_row`); the ORM reads NULL
    back as 0, sums included (`Sum` over it gives 0 for none), so Python code sees an int.
    Raw SQL over the column coalesces (`usage.rollups.ROLLUP_SQL`). A 0 written through the
    ORM stays 0: both read the same.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["null"] = True
        kwargs.setdefault("default", 0)
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> Any:
        name, path, args, kwargs = super().deconstruct()
        kwargs.pop("null", None)
        if kwargs.get("default") == 0:
            kwargs.pop("default")
        return name, path, args, kwargs

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> int:
        return 0 if value is None else int(value)


PRICED_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "output_image_tokens",
    "reasoning_tokens",
    "web_search_calls",
    "output_images",
)


class CostSource(models.IntegerChoices):
    COMPUTED = 0, "computed"
    CALLER = 1, "caller"
    UNPRICED = 2, "unpriced"


class TagSet(models.Model):
    """A tenant's dictionary of tag sets: each distinct set of tags its events carry, stored
    once (`usage.tagsets` resolves them). An event holds the set's 32-bit id instead of the JSON.

    `key` identifies the set within its tenant: the first 16 bytes of the SHA-256 of its
    pairs sorted by name, each written `<len>:<name><len>:<value>` (`usage.tagsets.tag_set_key`;
    migration 0013 computes the same in SQL). A hash rather than the JSON itself, as a set can
    be larger than a btree entry may be.
    """

    id = models.AutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    key = models.UUIDField()
    tags = models.JSONField()

    objects = TenantScopedManager["TagSet"]()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "key"], name="tagset_unique")]

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.tags.items())


class UsageEvent(models.Model):
    """One LLM call as an application reported it. Compact on purpose: there are millions.

    Its names are dictionary references (`dictionary_reference`): 32-bit ids, no constraint.
    Nor is its tenant a constraint on PostgreSQL (migration 0015): checking it ran a query per
    event at commit (10,000 rows: 280 ms with it, 54 ms without). Only ingest and the bulk
    loader write events, for a tenant they have just read, and deleting a tenant still
    deletes its events first (on_delete, as with the ClickHouse store, which has no
    constraints at all).
    """

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, db_index=False, db_constraint=False
    )
    event_id = models.CharField(max_length=128)
    occurred_at = models.DateTimeField()
    provider = dictionary_reference()
    model = dictionary_reference()
    operation = dictionary_reference()
    end_user = dictionary_reference()
    # The API key that reported the event (0: reported another way); budgets per key count it.
    api_key_id = models.BigIntegerField(default=0)
    session = dictionary_reference(null=True)
    # The event's tags as a tag-set dictionary id (NULL: no tags); `tags` reads the set.
    tag_set = models.ForeignKey(
        TagSet,
        on_delete=models.DO_NOTHING,
        related_name="+",
        db_index=False,
        db_constraint=False,
        null=True,
    )
    input_tokens = models.IntegerField(default=0)
    output_tokens = models.IntegerField(default=0)
    # Zero for most calls (two thirds, and nine in ten for cache writes and reasoning): NULL
    # when zero, 0 when read (`ZeroAsNullIntegerField`): 8 to 12 bytes less in most rows.
    cached_input_tokens = ZeroAsNullIntegerField()
    cache_write_tokens = ZeroAsNullIntegerField()
    reasoning_tokens = ZeroAsNullIntegerField()
    # Rarer parts of a call, NULL when not sent (a NULL costs a row nothing): the one-hour part
    # of the cache writes, audio and image tokens (parts of input/output), web searches and
    # generated images, and the service tier (NULL: standard).
    cache_write_1h_tokens = models.IntegerField(null=True)
    input_audio_tokens = models.IntegerField(null=True)
    output_audio_tokens = models.IntegerField(null=True)
    input_image_tokens = models.IntegerField(null=True)
    output_image_tokens = models.IntegerField(null=True)
    web_search_calls = models.IntegerField(null=True)
    output_images = models.IntegerField(null=True)
    service_tier = models.SmallIntegerField(choices=ServiceTier.choices, null=True)
    cost_nanos = models.BigIntegerField(default=0)
    cost_source = models.SmallIntegerField(choices=CostSource.choices, default=CostSource.COMPUTED)
    # The catalog row the cost came from (NULL: unpriced, the caller's cost, or a cache hit).
    price_id = models.IntegerField(null=True)
    latency_ms = models.IntegerField(null=True)
    is_error = models.BooleanField(default=False)
    cache_hit = models.BooleanField(default=False)
    # Optional: the caller's hash of the prompt, for finding repeated identical requests. NULL
    # (not "") when none was sent, so most events store nothing and "has a hash" is IS NOT NULL.
    prompt_hash = models.CharField(  # noqa: DJ001
        max_length=64, null=True, blank=True, db_index=False
    )

    objects = TenantScopedManager["UsageEvent"]()

    class Meta:
        constraints = [
            # The idempotency key: a resend (same time and id) is counted once; the same id
            # with another time is another event. On PostgreSQL it is the primary key of the
            # monthly partitioned table (migration 0012; `id` is then a plain column without
            # an index, kept for the admin), and the index of a tenant's time-range reads.
            models.UniqueConstraint(
                fields=["tenant", "occurred_at", "event_id"], name="usageevent_key"
            )
        ]
        indexes = [
            # Only events that carry a prompt hash (the repeated-prompts recommendation reads
            # them): small when few do, and free for events without one.
            models.Index(
                fields=["tenant", "occurred_at"],
                condition=Q(prompt_hash__isnull=False),
                name="usageevent_prompt_hash_time",
            ),
        ]

    def __str__(self) -> str:
        return self.event_id

    @property
    def cost_usd(self) -> Decimal:
        return nanos_to_usd(self.cost_nanos)

    @property
    def tags(self) -> dict[str, str] | None:
        """The event's tags (None: none); select_related("tag_set") spares a query each."""
        tag_set = self.tag_set if self.tag_set_id is not None else None
        return None if tag_set is None else tag_set.tags  # type: ignore[no-any-return]

    @property
    def tier(self) -> str:
        return ServiceTier(self.service_tier or 0).label

    @property
    def usage(self) -> Usage:
        """What the call consumed, as pricing reads it."""
        return Usage(**{name: getattr(self, name) or 0 for name in PRICED_COLUMNS})


class EventStamp(models.Model):
    """The time the server gave an event sent without `occurred_at` (and with an event id), the
    first time it arrived: a resend of it (same id, still without a time) gets this time again,
    so it lands on the same key and is counted once (`usage.services.usage_record_batch`).

    Written only for such events; retention forgets stamps older than its cutoff.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    event_id = models.CharField(max_length=128)
    occurred_at = models.DateTimeField()

    objects = TenantScopedManager["EventStamp"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "event_id"], name="eventstamp_key")
        ]

    def __str__(self) -> str:
        return self.event_id


class RollupSums(models.Model):
    """The sums every rollup table keeps of its events (`usage.rollups.ROLLUP_SUMS`)."""

    calls = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    cache_hits = models.BigIntegerField(default=0)
    unpriced_calls = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost_nanos = models.BigIntegerField(default=0)
    latency_ms_sum = models.BigIntegerField(default=0)
    latency_count = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class Rollup(RollupSums):
    """What the hourly rollup tables keep: sums of events per tenant, UTC hour, provider, model
    and operation (and, in `HourlyRollup`, end user and API key)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    hour = models.DateTimeField()
    provider = dictionary_reference()
    model = dictionary_reference()
    operation = dictionary_reference()

    class Meta:
        abstract = True


class HourlyRollup(Rollup):
    """Sums of events per tenant, hour and every dimension (end user and API key included),
    kept in the ingest transaction. Budgets and anything about end users read these; with an
    event store that keeps these sums itself (ClickHouse) it stays empty (`usage.user_sums`)."""

    end_user = dictionary_reference()
    api_key_id = models.BigIntegerField(default=0)

    objects = TenantScopedManager["HourlyRollup"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "tenant",
                    "hour",
                    "provider",
                    "model",
                    "operation",
                    "end_user",
                    "api_key_id",
                ],
                name="hourlyrollup_unique_key",
            )
        ]
        # One end user's rows (drill-down, per-user budgets) without reading everyone's.
        indexes = [
            models.Index(fields=["tenant", "end_user", "hour"], name="hourlyrollup_tenant_user")
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.hour:%Y-%m-%d %H}:00"


class ModelHourlyRollup(Rollup):
    """The same sums per tenant, hour, provider, model and operation only: the hourly rollups
    without end user and API key, kept in the same transaction.

    With thousands of end users almost every event has an hourly rollup row of its own; without
    them an hour holds one row per model and operation in use, so the dashboard's totals,
    series and model breakdowns over a month read a few thousand rows instead of a hundred
    thousand. Reads that filter or group by end user use `HourlyRollup`.
    """

    objects = TenantScopedManager["ModelHourlyRollup"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "hour", "provider", "model", "operation"],
                name="modelhourlyrollup_unique_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.hour:%Y-%m-%d %H}:00 (by model)"


class TagHourlyRollup(Rollup):
    """The same sums per tenant, hour, provider, model, operation and one tag (its name and
    value), kept in the same transaction: an event with two tags counts in two rows, one per
    tag name, and an event without tags in none. The overview's spend "by tag" reads these
    instead of the events (tags live in each event's JSON)."""

    tag_name = models.CharField(max_length=64)
    tag_value = models.CharField(max_length=200)

    objects = TenantScopedManager["TagHourlyRollup"]()

    class Meta:
        constraints = [
            # Led by the tag's name: one tag's rows in a range, without reading the others'.
            models.UniqueConstraint(
                fields=[
                    "tenant",
                    "tag_name",
                    "hour",
                    "provider",
                    "model",
                    "operation",
                    "tag_value",
                ],
                name="taghourlyrollup_unique_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.hour:%Y-%m-%d %H}:00 ({self.tag_name})"


class EndUserDailyRollup(RollupSums):
    """The sums of `HourlyRollup` per tenant, end user and UTC day (`day` is its midnight),
    kept in the same transactions (`usage.rollup_writes.rollups_add`, the ingest and bulk insert
    statements, and `usage.storerewrites.user_days_rebuild` after a rebuild). A day holds one
    row per end user instead of one per hour, model and key: the overview's end users table
    reads whole days here and only the hours at the range's edges from `HourlyRollup`
    (`usage.user_days`). Empty, as `HourlyRollup`, with a store that keeps the sums by end
    user itself."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    day = models.DateTimeField()
    end_user = dictionary_reference()

    objects = TenantScopedManager["EndUserDailyRollup"]()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "day", "end_user"], name="enduserdailyrollup_unique_key"
            )
        ]
        # The top end users' days (the overview's series) without reading everyone's.
        indexes = [
            models.Index(fields=["tenant", "end_user", "day"], name="enduserdailyrollup_user")
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.day:%Y-%m-%d} (by end user)"


class EventRewrite(models.Model):
    """A rewrite of stored events in an event store outside PostgreSQL (ClickHouse): recorded
    here first (an outbox), then done there, then the rollups of its hours are rebuilt and it is
    marked done in one PostgreSQL transaction (`usage.storerewrites`). A row left pending (the
    process stopped between the steps) is finished by the next rewrite of the tenant, the
    hourly re-pricing task, or `reprice_usage --resume`."""

    class Kind(models.TextChoices):
        REPRICE = "reprice"
        DELETE = "delete"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, db_index=False)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # Re-pricing: the events in [start, end), all or only the unpriced ones.
    start = models.DateTimeField(null=True, blank=True)
    end = models.DateTimeField(null=True, blank=True)
    only_unpriced = models.BooleanField(default=False)
    # Deleting: [[event id, ISO time], ...].
    keys = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    done_at = models.DateTimeField(null=True, blank=True)
    changed = models.IntegerField(default=0)

    objects = TenantScopedManager["EventRewrite"]()

    class Meta:
        indexes = [
            models.Index(
                fields=["tenant", "id"],
                condition=models.Q(done_at__isnull=True),
                name="eventrewrite_pending",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk}"
