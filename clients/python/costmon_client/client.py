"""`Costmon`: report usage, wrap SDK clients, and ask the pre-flight check."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Literal, TypeVar

from costmon_client._http import NETWORK_ERRORS, Transport, retry_after_seconds
from costmon_client.check import CheckResult
from costmon_client.errors import ConfigurationError
from costmon_client.events import (
    Attributes,
    TokenUsage,
    build_event,
    checked_tier,
    current_context,
    decimal_text,
    new_event_id,
)
from costmon_client.sender import Sender, SenderStats

logger = logging.getLogger("costmon_client")

CHECK_PATH = "/api/v1/check/"
# After a check timed out, the next checks answer from the policy at once for this long,
# rather than each making the application wait for the timeout again.
_CHECK_QUIET_AFTER_TIMEOUT = 5.0
# The longest a 503's Retry-After keeps checks from asking costmon.
_CHECK_QUIET_MAX_RETRY_AFTER = 60.0

OnUnreachable = Literal["allow", "deny"]
T = TypeVar("T")


class Costmon:
    """A connection to one costmon tenant (through its API key).

    Create one per process and share it: it owns the queue and the background thread that
    sends usage in batches. `url` and `api_key` default to $COSTMON_URL and $COSTMON_API_KEY.
    `end_user`, `operation`, `session_id` and `tags` are defaults for every event.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        end_user: str | None = None,
        operation: str | None = None,
        session_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_queue: int = 10_000,
        timeout: float = 10.0,
        check_timeout: float = 1.0,
        on_unreachable: OnUnreachable = "allow",
        retry_delay: float = 0.5,
        max_retry_delay: float = 30.0,
        shutdown_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = url or os.environ.get("COSTMON_URL")
        api_key = api_key or os.environ.get("COSTMON_API_KEY")
        if not url or not api_key:
            raise ConfigurationError(
                "costmon needs its URL and an API key with the ingest scope: pass url= and "
                "api_key=, or set COSTMON_URL and COSTMON_API_KEY"
            )
        if on_unreachable not in ("allow", "deny"):
            raise ValueError('on_unreachable must be "allow" or "deny"')
        self.url = url
        self.on_unreachable: OnUnreachable = on_unreachable
        self.check_timeout = check_timeout
        self._defaults = Attributes(
            end_user=end_user, operation=operation, session_id=session_id, tags=dict(tags or {})
        )
        self._transport = Transport(url, api_key, ssl_context=ssl_context)
        self._sender = Sender(
            self._transport,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_queue=max_queue,
            timeout=timeout,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
            shutdown_timeout=shutdown_timeout,
        )
        self._check_quiet_until = 0.0
        self._check_quiet_reason = ""
        self._check_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Costmon {self.url}>"

    # --- reporting --------------------------------------------------------------------------

    def wrap(
        self,
        client: T,
        *,
        provider: str | None = None,
        end_user: str | None = None,
        operation: str | None = None,
        session_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> T:
        """Return `client` (an `openai` or `anthropic` SDK client, sync or async) reporting the
        usage of each call. Everything else behaves as the original client.

        Per call, `costmon_end_user=`, `costmon_operation=`, `costmon_session_id=`,
        `costmon_tags=` and `costmon_reservation_id=` are taken off before the SDK sees them.
        """
        from costmon_client.integrations import wrap_client

        attributes = Attributes(
            end_user=end_user, operation=operation, session_id=session_id, tags=dict(tags or {})
        )
        wrapped: T = wrap_client(self, client, provider=provider, attributes=attributes)
        return wrapped

    def track(
        self,
        provider: str,
        model: str,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        input_audio_tokens: int = 0,
        input_image_tokens: int = 0,
        output_audio_tokens: int = 0,
        output_image_tokens: int = 0,
        web_search_calls: int = 0,
        output_images: int = 0,
        service_tier: str | None = None,
        latency_ms: float | None = None,
        status: Literal["success", "error"] = "success",
        end_user: str | None = None,
        operation: str | None = None,
        session_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        cost_usd: Decimal | int | str | None = None,
        cache_hit: bool = False,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
        reservation_id: str | None = None,
        prompt_hash: str | None = None,
    ) -> str:
        """Report one call to any provider; returns its event id. Never blocks on costmon.

        `input_tokens` counts all input tokens, cached ones included; `cached_input_tokens`,
        `cache_write_tokens` (of which `cache_write_1h_tokens` kept for an hour),
        `input_audio_tokens` and `input_image_tokens` are parts of it, as `reasoning_tokens`,
        `output_audio_tokens` and `output_image_tokens` are parts of `output_tokens`.
        `service_tier` is `standard` (the default), `batch`, `flex` or `priority` (OpenAI's
        names `default`, `auto`, `scale` and `fast` are read as costmon's). `cost_usd` (a Decimal
        or decimal string, never a float) overrides costmon's own pricing.
        """
        if cost_usd is not None:
            decimal_text(cost_usd)  # a float or a negative amount is the caller's bug: say so now
        tier = checked_tier(service_tier)
        event_id = event_id or new_event_id()
        attributes = self.attributes_for(
            Attributes(),
            call=Attributes(
                end_user=end_user, operation=operation, session_id=session_id, tags=tags or {}
            ),
        )
        self._record(
            provider=provider,
            model=model,
            usage=TokenUsage(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cached_input_tokens=cached_input_tokens,
                cache_write_tokens=cache_write_tokens,
                reasoning_tokens=reasoning_tokens,
                cache_write_1h_tokens=cache_write_1h_tokens,
                input_audio_tokens=input_audio_tokens,
                input_image_tokens=input_image_tokens,
                output_audio_tokens=output_audio_tokens,
                output_image_tokens=output_image_tokens,
                web_search_calls=web_search_calls,
                output_images=output_images,
            ),
            attributes=attributes,
            event_id=event_id,
            occurred_at=occurred_at,
            latency_ms=latency_ms,
            error=status == "error",
            cost_usd=cost_usd,
            cache_hit=cache_hit,
            reservation_id=reservation_id,
            prompt_hash=prompt_hash,
            service_tier=tier,
        )
        return event_id

    def span(
        self,
        provider: str,
        model: str,
        *,
        end_user: str | None = None,
        operation: str | None = None,
        session_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        reservation_id: str | None = None,
        prompt_hash: str | None = None,
    ) -> Span:
        """Time a call to any provider: `with costmon.span(...) as s: ...; s.usage(...)`.

        The event is queued when the block ends, with its latency; an exception marks it as an
        error and goes on to the caller unchanged.
        """
        return Span(
            self,
            provider=provider,
            model=model,
            attributes=Attributes(
                end_user=end_user, operation=operation, session_id=session_id, tags=tags or {}
            ),
            reservation_id=reservation_id,
            prompt_hash=prompt_hash,
        )

    def attributes_for(
        self,
        wrapper: Attributes,
        *,
        call: Attributes,
        default_operation: str | None = None,
        sdk_end_user: str | None = None,
    ) -> Attributes:
        """Merge, later winning: the call kind's operation, this client's defaults, the
        wrapper's, the surrounding `context()`, the end user the SDK call names, the call's own."""
        merged = Attributes(operation=default_operation).merged(self._defaults).merged(wrapper)
        if (ambient := current_context()) is not None:
            merged = merged.merged(ambient)
        if sdk_end_user:
            merged = merged.merged(Attributes(end_user=sdk_end_user))
        return merged.merged(call)

    def _record(self, **fields: Any) -> None:
        try:
            self.enqueue(build_event(**fields))
        except Exception:
            logger.exception("costmon: could not record usage")

    def enqueue(self, event: dict[str, Any]) -> None:
        """Queue a ready event (as built by `events.build_event`) for the background sender."""
        self._sender.enqueue(event)

    def flush(self, timeout: float = 5.0) -> bool:
        """Send what is queued now; True when everything was sent (or refused) in time."""
        return self._sender.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush (for at most `timeout`, default `shutdown_timeout`) and stop the sender.
        Also done at interpreter exit."""
        return self._sender.close(timeout)

    def stats(self) -> SenderStats:
        """Counts of events sent, refused, dropped and retried, and what is queued now."""
        return self._sender.stats()

    def __enter__(self) -> Costmon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the pre-flight check -----------------------------------------------------------------

    def check(
        self,
        *,
        provider: str | None = None,
        model: str | None = None,
        end_user: str | None = None,
        operation: str | None = None,
        tags: Mapping[str, str] | None = None,
        estimated_input_tokens: int | None = None,
        estimated_output_tokens: int | None = None,
        estimated_cost_usd: Decimal | int | str | None = None,
        reserve: bool = False,
        event_id: str | None = None,
        raise_on_deny: bool = False,
        on_unreachable: OnUnreachable | None = None,
        timeout: float | None = None,
    ) -> CheckResult:
        """Ask costmon whether a call may spend (`POST /api/v1/check/`).

        When costmon is down, slow (more than `timeout`, default `check_timeout`) or answers
        with an error, the answer is `on_unreachable`'s: allowed ("allow", the default) or not
        ("deny"), with `result.unreachable` set. With `reserve`, costmon holds the estimate
        against hard budgets until the call's event (reported with `reservation_id=`, or with
        the same `event_id`) settles it. With `raise_on_deny`, a refusal raises
        BudgetExceeded, RateLimited (with `retry_after`), EmergencyStopped or
        CostmonUnavailable instead of returning.
        """
        attributes = self.attributes_for(
            Attributes(), call=Attributes(end_user=end_user, operation=operation, tags=tags or {})
        )
        given = {
            "provider": provider,
            "model": model,
            "end_user": attributes.end_user,
            "operation": attributes.operation,
            "estimated_input_tokens": estimated_input_tokens,
            "estimated_output_tokens": estimated_output_tokens,
            "event_id": event_id,
        }
        body: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        body["reserve"] = reserve
        if attributes.tags:
            body["tags"] = {str(k): str(v) for k, v in attributes.tags.items()}
        if estimated_cost_usd is not None:
            body["estimated_cost_usd"] = decimal_text(estimated_cost_usd)
        result = self._ask(body, timeout if timeout is not None else self.check_timeout)
        if result.unreachable:
            policy = on_unreachable or self.on_unreachable
            result = CheckResult.fallback(
                allowed=policy == "allow", problem=result.warnings[0]["message"]
            )
        if raise_on_deny:
            result.raise_if_denied()
        return result

    async def acheck(self, **kwargs: Any) -> CheckResult:
        """`check()` for asyncio code: runs in a worker thread so the event loop never waits."""
        return await asyncio.to_thread(lambda: self.check(**kwargs))

    def _ask(self, body: dict[str, Any], timeout: float) -> CheckResult:
        """costmon's answer, or a placeholder with `unreachable` set and the problem."""
        if time.monotonic() < self._check_quiet_until:
            return CheckResult.fallback(allowed=True, problem=self._check_quiet_reason)
        try:
            response = self._transport.post_json(CHECK_PATH, body, timeout=timeout)
        except NETWORK_ERRORS as exc:
            if isinstance(exc, TimeoutError):
                self._quiet_checks(_CHECK_QUIET_AFTER_TIMEOUT, "costmon timed out recently")
            problem = f"costmon unreachable: {exc.__class__.__name__}: {exc}"
            logger.warning("costmon: check failed (%s); answering from on_unreachable", problem)
            return CheckResult.fallback(allowed=True, problem=problem)
        if response.status in (200, 429):
            try:
                data = response.json()
            except ValueError:
                data = None
            if isinstance(data, dict) and "allowed" in data:
                return CheckResult.from_json(data, retry_after=_retry_after(response.headers))
        wait = retry_after_seconds(response.headers) if response.status in (502, 503, 504) else None
        if wait is not None:
            # costmon is briefly unable to answer (its database restarting, say) and said when
            # to come back: until then checks answer from the policy without asking.
            wait = min(wait, _CHECK_QUIET_MAX_RETRY_AFTER)
            self._quiet_checks(wait, f"costmon answered {response.status} and asked to retry later")
            problem = (
                f"costmon answered {response.status} to the check (it asks to retry in {wait:g} s)"
            )
            logger.warning("costmon: %s; answering from on_unreachable until then", problem)
            return CheckResult.fallback(allowed=True, problem=problem)
        level = logging.ERROR if response.status in (400, 401, 403) else logging.WARNING
        logger.log(
            level,
            "costmon: check answered %s: %r; answering from on_unreachable",
            response.status,
            response.body[:300],
        )
        return CheckResult.fallback(
            allowed=True, problem=f"costmon answered {response.status} to the check"
        )

    def _quiet_checks(self, seconds: float, reason: str) -> None:
        with self._check_lock:
            self._check_quiet_until = time.monotonic() + seconds
            self._check_quiet_reason = reason


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None


class Span:
    """One call to any provider, timed by a `with` block (sync or async)."""

    def __init__(
        self,
        costmon: Costmon,
        *,
        provider: str,
        model: str,
        attributes: Attributes,
        reservation_id: str | None,
        prompt_hash: str | None,
    ) -> None:
        self._costmon = costmon
        self.provider = provider
        self.model = model
        self.event_id = new_event_id()
        self._attributes = attributes
        self._usage = TokenUsage()
        self._cost_usd: Decimal | int | str | None = None
        self._service_tier: str | None = None
        self._cache_hit = False
        self._error = False
        self._reservation_id = reservation_id
        self._prompt_hash = prompt_hash
        self._occurred_at = datetime.now(UTC)
        self._t0 = time.perf_counter()
        self._done = False

    def usage(
        self,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cached_input_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        reasoning_tokens: int | None = None,
        model: str | None = None,
        cost_usd: Decimal | int | str | None = None,
        cache_hit: bool | None = None,
        cache_write_1h_tokens: int | None = None,
        input_audio_tokens: int | None = None,
        input_image_tokens: int | None = None,
        output_audio_tokens: int | None = None,
        output_image_tokens: int | None = None,
        web_search_calls: int | None = None,
        output_images: int | None = None,
        service_tier: str | None = None,
    ) -> None:
        """Set what the response said (the values given replace earlier ones); the fields mean
        what they mean for `Costmon.track`."""
        for name, value in (
            ("input_tokens", input_tokens),
            ("output_tokens", output_tokens),
            ("cached_input_tokens", cached_input_tokens),
            ("cache_write_tokens", cache_write_tokens),
            ("reasoning_tokens", reasoning_tokens),
            ("cache_write_1h_tokens", cache_write_1h_tokens),
            ("input_audio_tokens", input_audio_tokens),
            ("input_image_tokens", input_image_tokens),
            ("output_audio_tokens", output_audio_tokens),
            ("output_image_tokens", output_image_tokens),
            ("web_search_calls", web_search_calls),
            ("output_images", output_images),
        ):
            if value is not None:
                setattr(self._usage, name, value)
        if service_tier is not None:
            self._service_tier = checked_tier(service_tier)
        if model:
            self.model = model
        if cost_usd is not None:
            decimal_text(cost_usd)
            self._cost_usd = cost_usd
        if cache_hit is not None:
            self._cache_hit = cache_hit

    def set(
        self,
        *,
        end_user: str | None = None,
        operation: str | None = None,
        session_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Attribute the call once it is known whom or what it was for."""
        self._attributes = self._attributes.merged(
            Attributes(
                end_user=end_user, operation=operation, session_id=session_id, tags=tags or {}
            )
        )

    def fail(self) -> None:
        """Mark the call as failed without raising (e.g. the provider answered with an error)."""
        self._error = True

    def __enter__(self) -> Span:
        self._occurred_at = datetime.now(UTC)
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(error=exc_type is not None)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(error=exc_type is not None)

    def finish(self, *, error: bool = False) -> None:
        """Queue the event (once); called by the `with` block's end."""
        if self._done:
            return
        self._done = True
        attributes = self._costmon.attributes_for(Attributes(), call=self._attributes)
        self._costmon._record(
            provider=self.provider,
            model=self.model,
            usage=self._usage,
            attributes=attributes,
            event_id=self.event_id,
            occurred_at=self._occurred_at,
            latency_ms=(time.perf_counter() - self._t0) * 1000,
            error=error or self._error,
            cost_usd=self._cost_usd,
            cache_hit=self._cache_hit,
            reservation_id=self._reservation_id,
            prompt_hash=self._prompt_hash,
            service_tier=self._service_tier,
        )
