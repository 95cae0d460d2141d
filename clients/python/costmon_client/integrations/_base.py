"""What every SDK wrapper shares: a proxy over the SDK client, one `Call` per tracked request, and
stream wrappers that read the usage as the application consumes the stream.

The proxy intercepts only the methods listed in a provider's routes (e.g. `chat.completions.create`);
every other attribute is the SDK's own object. Whatever happens while reading usage is logged and
swallowed; whatever the SDK raises reaches the application unchanged.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from costmon_client.events import Attributes, TokenUsage, build_event, new_event_id

if TYPE_CHECKING:
    from costmon_client.client import Costmon

logger = logging.getLogger("costmon_client")

# Per-call keyword arguments the wrappers take off before calling the SDK.
CALL_OPTIONS = (
    "costmon_end_user",
    "costmon_operation",
    "costmon_session_id",
    "costmon_tags",
    "costmon_reservation_id",
    "costmon_event_id",
)


def get(obj: Any, name: str) -> Any:
    """An attribute of an SDK model, or a key of a plain dict; None when absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass
class Reading:
    """What a response (or the stream so far) says: the model that answered, its usage and the
    service tier that served it (costmon's name; None: standard)."""

    model: str | None = None
    usage: TokenUsage | None = None
    service_tier: str | None = None


class StreamObserver(Protocol):
    def observe(self, item: Any) -> bool:
        """Read one item; True hides it from the application (an item only costmon asked for)."""

    def reading(self) -> Reading: ...


@dataclass(frozen=True)
class Route:
    """How to track one SDK method.

    kind "call": the method returns a response, or a stream when called with stream=True.
    kind "manager": the method returns a context manager whose `__enter__` makes the request
    and yields a stream object; `read_stream` reads the usage from that object at exit.
    """

    operation: str
    kind: Literal["call", "manager"] = "call"
    read_response: Callable[[Any], Reading] | None = None
    observer: Callable[[Any], StreamObserver] | None = None  # given what `prepare` returned
    read_stream: Callable[[Any], Reading] | None = None
    prepare: Callable[[dict[str, Any]], Any] | None = None  # adjusts the SDK's kwargs
    end_user: Callable[[dict[str, Any]], str | None] | None = None  # from the SDK's own params


@dataclass
class Tracker:
    """One wrapped SDK client's settings, shared by all its proxies."""

    costmon: Costmon
    provider: str
    routes: Mapping[tuple[str, ...], Route]
    is_async: bool
    attributes: Attributes
    prefixes: frozenset[tuple[str, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.prefixes = frozenset(path[:i] for path in self.routes for i in range(1, len(path)))

    def start(self, route: Route, kwargs: dict[str, Any]) -> Call:
        """Take costmon's options off `kwargs` and open a Call (the clock starts here)."""
        options = {name: kwargs.pop(name) for name in CALL_OPTIONS if name in kwargs}
        attributes, model, prepared = self.attributes, None, None
        try:
            attributes = self.costmon.attributes_for(
                self.attributes,
                default_operation=route.operation,
                sdk_end_user=route.end_user(kwargs) if route.end_user else None,
                call=Attributes(
                    end_user=options.get("costmon_end_user"),
                    operation=options.get("costmon_operation"),
                    session_id=options.get("costmon_session_id"),
                    tags=options.get("costmon_tags") or {},
                ),
            )
            model = kwargs.get("model")
            if route.prepare is not None:
                prepared = route.prepare(kwargs)
        except Exception:
            logger.exception("costmon: could not read the call's parameters")
        call = Call(
            self.costmon,
            provider=self.provider,
            request_model=model if isinstance(model, str) else None,
            attributes=attributes,
            reservation_id=options.get("costmon_reservation_id"),
        )
        call.prepared = prepared
        if isinstance(event_id := options.get("costmon_event_id"), str) and event_id:
            call.event_id = event_id  # e.g. the one a check(reserve=True, event_id=...) named
        return call


class Call:
    """One tracked SDK request: its event id and start time are fixed when it is made."""

    __slots__ = (
        "_costmon",
        "_done",
        "_t0",
        "attributes",
        "event_id",
        "occurred_at",
        "prepared",
        "provider",
        "request_model",
        "reservation_id",
    )

    def __init__(
        self,
        costmon: Costmon,
        *,
        provider: str,
        request_model: str | None,
        attributes: Attributes,
        reservation_id: str | None,
    ) -> None:
        self._costmon = costmon
        self.provider = provider
        self.request_model = request_model
        self.attributes = attributes
        self.reservation_id = reservation_id
        self.event_id = new_event_id()
        self.occurred_at = datetime.now(UTC)
        self._t0 = time.perf_counter()
        self._done = False
        self.prepared: Any = None  # what the route's `prepare` returned

    def restart_clock(self) -> None:
        self.occurred_at = datetime.now(UTC)
        self._t0 = time.perf_counter()

    def finish(self, reading: Reading | None, *, error: bool) -> None:
        """Queue the event, once; never raises."""
        if self._done:
            return
        self._done = True
        try:
            latency_ms = (time.perf_counter() - self._t0) * 1000
            reading = reading or Reading()
            event = build_event(
                provider=self.provider,
                model=reading.model or self.request_model or "unknown",
                usage=reading.usage or TokenUsage(),
                attributes=self.attributes,
                event_id=self.event_id,
                occurred_at=self.occurred_at,
                latency_ms=latency_ms,
                error=error,
                reservation_id=self.reservation_id,
                service_tier=reading.service_tier,
            )
            self._costmon.enqueue(event)
        except Exception:
            logger.exception("costmon: could not record a call")


def _read(read: Callable[[Any], Reading] | None, value: Any) -> Reading | None:
    if read is None:
        return None
    try:
        return read(value)
    except Exception:
        logger.exception("costmon: could not read the usage of a response")
        return None


# --- wrapping methods ---------------------------------------------------------------------------


def wrap_method(tracker: Tracker, method: Callable[..., Any], route: Route) -> Callable[..., Any]:
    if route.kind == "manager":

        @functools.wraps(method)
        def open_manager(*args: Any, **kwargs: Any) -> Any:
            call = tracker.start(route, kwargs)
            try:
                manager = method(*args, **kwargs)
            except BaseException:
                call.finish(None, error=True)
                raise
            return TrackedStreamManager(manager, call, route)

        return open_manager

    if tracker.is_async:

        @functools.wraps(method)
        async def call_async(*args: Any, **kwargs: Any) -> Any:
            call = tracker.start(route, kwargs)
            try:
                result = await method(*args, **kwargs)
            except BaseException:
                call.finish(None, error=True)
                raise
            if kwargs.get("stream") is True and route.observer is not None:
                return TrackedAsyncStream(result, call, _observer(route, call))
            call.finish(_read(route.read_response, result), error=False)
            return result

        return call_async

    @functools.wraps(method)
    def call_sync(*args: Any, **kwargs: Any) -> Any:
        call = tracker.start(route, kwargs)
        try:
            result = method(*args, **kwargs)
        except BaseException:
            call.finish(None, error=True)
            raise
        if kwargs.get("stream") is True and route.observer is not None:
            return TrackedStream(result, call, _observer(route, call))
        call.finish(_read(route.read_response, result), error=False)
        return result

    return call_sync


def _observer(route: Route, call: Call) -> StreamObserver | None:
    try:
        return route.observer(call.prepared) if route.observer else None
    except Exception:
        logger.exception("costmon: could not observe a stream")
        return None


class _StreamBase:
    """Shared by the sync and async stream wrappers: observe items, finish the call once."""

    def __init__(self, stream: Any, call: Call, observer: StreamObserver | None) -> None:
        self._stream = stream
        self._call = call
        self._observer = observer

    def _observe(self, item: Any) -> bool:
        """Read one item; True when the application should not see it."""
        if self._observer is not None:
            try:
                return self._observer.observe(item)
            except Exception:
                logger.exception("costmon: could not read a stream event")
                self._observer = None
        return False

    def _finish(self, *, error: bool) -> None:
        reading = None
        if self._observer is not None:
            try:
                reading = self._observer.reading()
            except Exception:
                logger.exception("costmon: could not read the usage of a stream")
        self._call.finish(reading, error=error)

    def __getattr__(self, name: str) -> Any:
        if name in ("_stream", "_call", "_observer"):
            raise AttributeError(name)
        return getattr(self._stream, name)

    def __del__(self) -> None:
        # A stream dropped half read still cost what was generated so far.
        call = self.__dict__.get("_call")
        if call is not None:
            self._finish(error=False)

    def __repr__(self) -> str:
        return f"<costmon-tracked {self._stream!r}>"


class TrackedStream(_StreamBase):
    """An SDK `Stream`: iterate it as usual; the usage is recorded when it ends or is closed."""

    def __iter__(self) -> TrackedStream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                item = next(self._stream)
            except StopIteration:
                self._finish(error=False)
                raise
            except BaseException:
                self._finish(error=True)
                raise
            if not self._observe(item):
                return item

    def __enter__(self) -> TrackedStream:
        self._stream.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return self._stream.__exit__(exc_type, exc, tb)
        finally:
            self._finish(error=exc_type is not None)

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._finish(error=False)


class TrackedAsyncStream(_StreamBase):
    """An SDK `AsyncStream`, tracked like TrackedStream."""

    def __aiter__(self) -> TrackedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                item = await self._stream.__anext__()
            except StopAsyncIteration:
                self._finish(error=False)
                raise
            except BaseException:
                self._finish(error=True)
                raise
            if not self._observe(item):
                return item

    async def __aenter__(self) -> TrackedAsyncStream:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return await self._stream.__aexit__(exc_type, exc, tb)
        finally:
            self._finish(error=exc_type is not None)

    async def close(self) -> None:
        try:
            await self._stream.close()
        finally:
            self._finish(error=False)


class TrackedStreamManager:
    """A `.stream(...)` helper's context manager (sync or async): the request is made on enter,
    and the usage is read from the SDK's accumulated snapshot on exit."""

    def __init__(self, manager: Any, call: Call, route: Route) -> None:
        self._manager = manager
        self._call = call
        self._route = route
        self._stream: Any = None

    def __enter__(self) -> Any:
        self._call.restart_clock()
        try:
            self._stream = self._manager.__enter__()
        except BaseException:
            self._call.finish(None, error=True)
            raise
        return self._stream

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return self._manager.__exit__(exc_type, exc, tb)
        finally:
            self._call.finish(
                _read(self._route.read_stream, self._stream), error=exc_type is not None
            )

    async def __aenter__(self) -> Any:
        self._call.restart_clock()
        try:
            self._stream = await self._manager.__aenter__()
        except BaseException:
            self._call.finish(None, error=True)
            raise
        return self._stream

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return await self._manager.__aexit__(exc_type, exc, tb)
        finally:
            self._call.finish(
                _read(self._route.read_stream, self._stream), error=exc_type is not None
            )

    def __getattr__(self, name: str) -> Any:
        if name in ("_manager", "_call", "_route", "_stream"):
            raise AttributeError(name)
        return getattr(self._manager, name)


# --- the client proxy ---------------------------------------------------------------------------

# Methods of the SDK client that return another client with changed options.
_CLIENT_FACTORIES = frozenset({"with_options", "copy"})


class ClientProxy:
    """Stands in for an SDK client (or one of its resources, e.g. `client.chat`)."""

    __slots__ = ("_costmon_children", "_costmon_path", "_costmon_target", "_costmon_tracker")

    def __init__(self, target: Any, tracker: Tracker, path: tuple[str, ...] = ()) -> None:
        object.__setattr__(self, "_costmon_target", target)
        object.__setattr__(self, "_costmon_tracker", tracker)
        object.__setattr__(self, "_costmon_path", path)
        object.__setattr__(self, "_costmon_children", {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_costmon_"):
            raise AttributeError(name)
        target = self._costmon_target
        value = getattr(target, name)
        tracker = self._costmon_tracker
        path = (*self._costmon_path, name)
        route = tracker.routes.get(path)
        if route is not None and callable(value):
            return wrap_method(tracker, value, route)
        if path in tracker.prefixes:
            cached = self._costmon_children.get(name)
            if cached is None or cached._costmon_target is not value:
                cached = ClientProxy(value, tracker, path)
                self._costmon_children[name] = cached
            return cached
        if not self._costmon_path and name in _CLIENT_FACTORIES and callable(value):

            @functools.wraps(value)
            def rewrap(*args: Any, **kwargs: Any) -> ClientProxy:
                return ClientProxy(value(*args, **kwargs), tracker)

            return rewrap
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._costmon_target, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._costmon_target, name)

    def __dir__(self) -> list[str]:
        return dir(self._costmon_target)

    def __repr__(self) -> str:
        return f"<costmon-tracked {self._costmon_target!r}>"

    # isinstance(wrapped, OpenAI) stays True, as code that type-checks its client expects.
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._costmon_target)

    @property
    def costmon_unwrapped(self) -> Any:
        """The SDK object itself."""
        return self._costmon_target

    def __enter__(self) -> ClientProxy:
        self._costmon_target.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        return self._costmon_target.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> ClientProxy:
        await self._costmon_target.__aenter__()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        return await self._costmon_target.__aexit__(exc_type, exc, tb)
