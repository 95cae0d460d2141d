from django.db import migrations

from costmon.core.rls import EnableRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("budgets", "0001_initial")]

    operations = [
        EnableRowLevelSecurity("budgets_budget"),
        EnableRowLevelSecurity("budgets_ratelimit"),
        EnableRowLevelSecurity("budgets_counterstate"),
        EnableRowLevelSecurity("budgets_emergencystoprule", shared_rows=True),
        EnableRowLevelSecurity("budgets_emergencystop", shared_rows=True),
    ]
