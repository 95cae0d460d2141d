"""Staff's admin for budgets, rate limits and the emergency stop, across every tenant (one module
per area; importing them registers their admins).

Writes go through the budgets services (or, for rows without a service, bump the tenant's
configuration version after the commit), so pre-flight checks in every process see a change
at once and never a half-written one.
"""

from budgets.admin import budgets, counters, emergency_stop

__all__ = ["budgets", "counters", "emergency_stop"]
