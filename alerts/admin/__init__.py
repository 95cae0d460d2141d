"""Staff's admin for alert channels, rules, alerts and deliveries, across every tenant (one module
per area; importing them registers their admins).

Channels are written through `channel_save`, so the transport's own checks (https only, a
webhook secret of the right length, valid addresses) run and show on the config field. A
webhook's secret is never rendered: the form shows the config without it and keeps the stored
one unless a new one is entered. Alerts and notifications are the record of what happened:
they are read-only, except for acknowledging an alert.
"""

from alerts.admin import channels, records, rules

__all__ = ["channels", "records", "rules"]
