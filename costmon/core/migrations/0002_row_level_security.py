from django.db import migrations

from costmon.core.rls import EnableRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("costmon", "0001_initial")]

    operations = [
        EnableRowLevelSecurity("costmon_membership"),
        EnableRowLevelSecurity("costmon_apikey"),
    ]
