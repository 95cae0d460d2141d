from django.db import migrations

from costmon.core.rls import EnableRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("usage", "0001_initial")]

    operations = [
        EnableRowLevelSecurity("usage_dimension"),
        EnableRowLevelSecurity("usage_modelprice", shared_rows=True),
        EnableRowLevelSecurity("usage_modelalias"),
        EnableRowLevelSecurity("usage_usageevent"),
        EnableRowLevelSecurity("usage_hourlyrollup"),
    ]
