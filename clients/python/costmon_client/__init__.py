"""costmon's Python client: report LLM usage to costmon and ask it before spending.

```
from openai import OpenAI
from costmon_client import Costmon

costmon = Costmon("https://costmon.example.com", api_key="cm_...")
client = costmon.wrap(OpenAI())  # every call's tokens, latency and status reach costmon
```

The module-level functions (`wrap`, `track`, `span`, `check`, `flush`, ...) use one default
client, configured by `init(...)` or, on first use, from $COSTMON_URL and $COSTMON_API_KEY.
Nothing here needs Django or any package outside the standard library; `openai` and
`anthropic` are imported only by the wrappers, from the application's own install.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, TypeVar

from costmon_client._version import __version__
from costmon_client.check import BudgetStatus, CheckResult
from costmon_client.client import Costmon, Span
from costmon_client.errors import (
    BudgetExceeded,
    CallDenied,
    ConfigurationError,
    CostmonError,
    CostmonUnavailable,
    EmergencyStopped,
    RateLimited,
)
from costmon_client.events import TokenUsage, context
from costmon_client.sender import SenderStats

# Quiet unless the application configures logging for "costmon_client".
logging.getLogger("costmon_client").addHandler(logging.NullHandler())

__all__ = [
    "BudgetExceeded",
    "BudgetStatus",
    "CallDenied",
    "CheckResult",
    "ConfigurationError",
    "Costmon",
    "CostmonError",
    "CostmonUnavailable",
    "EmergencyStopped",
    "RateLimited",
    "SenderStats",
    "Span",
    "TokenUsage",
    "__version__",
    "acheck",
    "check",
    "close",
    "context",
    "flush",
    "get_client",
    "init",
    "span",
    "track",
    "wrap",
]

T = TypeVar("T")
_default: Costmon | None = None
_default_lock = threading.Lock()


def init(url: str | None = None, api_key: str | None = None, **options: Any) -> Costmon:
    """Configure the default client used by the module-level functions (see `Costmon`)."""
    global _default
    with _default_lock:
        previous, _default = _default, Costmon(url, api_key, **options)
    if previous is not None:
        previous.close()
    return _default


def get_client() -> Costmon:
    """The default client, made from $COSTMON_URL and $COSTMON_API_KEY on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Costmon()
    return _default


def wrap(client: T, **options: Any) -> T:
    """`Costmon.wrap` on the default client."""
    return get_client().wrap(client, **options)


def track(provider: str, model: str, **fields: Any) -> str:
    """`Costmon.track` on the default client."""
    return get_client().track(provider, model, **fields)


def span(provider: str, model: str, **fields: Any) -> Span:
    """`Costmon.span` on the default client."""
    return get_client().span(provider, model, **fields)


def check(**fields: Any) -> CheckResult:
    """`Costmon.check` on the default client."""
    return get_client().check(**fields)


async def acheck(**fields: Any) -> CheckResult:
    """`Costmon.acheck` on the default client."""
    return await get_client().acheck(**fields)


def flush(timeout: float = 5.0) -> bool:
    """`Costmon.flush` on the default client (True when there is none)."""
    return _default.flush(timeout) if _default is not None else True


def close(timeout: float | None = None) -> bool:
    """`Costmon.close` on the default client, which is then forgotten (the next module-level
    call makes a new one). True when there was none or nothing was left unsent."""
    global _default
    with _default_lock:
        client, _default = _default, None
    return client.close(timeout) if client is not None else True
