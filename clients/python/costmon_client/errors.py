"""Exceptions the client raises: only from `check(..., raise_on_deny=True)` and misconfiguration.

Reporting usage never raises: a slow or absent costmon must not break the application.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from costmon_client.check import CheckResult


class CostmonError(Exception):
    """Base of every exception this package raises."""


class ConfigurationError(CostmonError):
    """The client was not given what it needs (URL, API key)."""


class CallDenied(CostmonError):
    """The pre-flight check said no; `result` holds costmon's full answer."""

    def __init__(self, message: str, result: CheckResult) -> None:
        super().__init__(message)
        self.result = result

    @property
    def reasons(self) -> list[str]:
        return self.result.reasons


class BudgetExceeded(CallDenied):
    """A hard budget would be exceeded (`suggested_model` may name a cheaper model)."""


class EmergencyStopped(CallDenied):
    """The tenant's (or the global) emergency stop is on."""


class RateLimited(CallDenied):
    """A rate limit applies; try again after `retry_after` seconds."""

    def __init__(self, message: str, result: CheckResult) -> None:
        super().__init__(message, result)
        self.retry_after = result.retry_after


class CostmonUnavailable(CallDenied):
    """costmon did not answer and the client is set to `on_unreachable="deny"`."""
