from django.db import migrations

from costmon.core.rls import EnableRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("alerts", "0001_initial")]

    operations = [
        EnableRowLevelSecurity("alerts_channel"),
        EnableRowLevelSecurity("alerts_alertrule"),
        EnableRowLevelSecurity("alerts_alert"),
        EnableRowLevelSecurity("alerts_notification"),
    ]
