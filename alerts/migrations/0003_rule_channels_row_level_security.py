from django.db import migrations

from costmon.core.rls import EnableLinkRowLevelSecurity


class Migration(migrations.Migration):
    """The rule-to-channel link table has no tenant column: its rows belong to the tenant of
    their rule, and may only join a rule and a channel of the same tenant."""

    dependencies = [("alerts", "0002_row_level_security")]

    operations = [
        EnableLinkRowLevelSecurity(
            "alerts_alertrule_channels",
            parents={"alertrule_id": "alerts_alertrule", "channel_id": "alerts_channel"},
        ),
    ]
