from django.db import migrations

from costmon.core.rls import refresh_policies


class Migration(migrations.Migration):
    """Every app's tenant isolation policy, rewritten to read its settings once per query."""

    dependencies = [
        ("usage", "0005_model_hourly_rollup"),
        ("budgets", "0002_row_level_security"),
        ("alerts", "0002_row_level_security"),
        ("costmon", "0002_row_level_security"),
    ]

    operations = [migrations.RunPython(refresh_policies, migrations.RunPython.noop)]
