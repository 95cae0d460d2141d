"""Wrapping SDK clients: pick the provider's routes from the client's class."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from costmon_client.events import Attributes
from costmon_client.integrations._base import ClientProxy, Tracker

if TYPE_CHECKING:
    from costmon_client.client import Costmon

__all__ = ["ClientProxy", "wrap_client"]


def _sdk_of(client: Any) -> str | None:
    for cls in type(client).__mro__:
        root = cls.__module__.split(".", 1)[0]
        if root in ("openai", "anthropic"):
            return root
    return None


def _is_async(client: Any) -> bool:
    if type(client).__name__.startswith("Async"):
        return True
    return inspect.iscoroutinefunction(getattr(client, "close", None))


def wrap_client(
    costmon: Costmon, client: Any, *, provider: str | None, attributes: Attributes
) -> Any:
    """A proxy over an `openai` or `anthropic` client that reports each call's usage."""
    if isinstance(client, ClientProxy):
        client = client.costmon_unwrapped  # wrap again with new settings, never twice
    sdk = _sdk_of(client)
    if sdk == "openai":
        from costmon_client.integrations import openai as module
    elif sdk == "anthropic":
        from costmon_client.integrations import anthropic as module  # type: ignore[no-redef]
    else:
        raise TypeError(
            f"costmon can wrap clients of the openai and anthropic SDKs, not {type(client)!r}; "
            "report other calls with track() or span()"
        )
    tracker = Tracker(
        costmon=costmon,
        provider=provider or module.provider_for(client),
        routes=module.ROUTES,
        is_async=_is_async(client),
        attributes=attributes,
    )
    return ClientProxy(client, tracker)
