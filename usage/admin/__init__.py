"""Staff's admin for the price catalog and (read-only) usage data, across every tenant.

One module per area; this one registers them.
"""

from __future__ import annotations

from django.contrib import admin

from costmon.core.models import Tenant
from usage.admin.catalog import CatalogAliasAdmin, ModelAliasAdmin, ModelPriceAdmin
from usage.admin.data import (
    DimensionAdmin,
    EventRewriteAdmin,
    HourlyRollupAdmin,
    UsageEventAdmin,
)
from usage.admin.syncs import PriceChangeHoldAdmin, PriceSyncAdmin
from usage.admin.tenants import TenantAdmin
from usage.models import (
    CatalogAlias,
    Dimension,
    EventRewrite,
    HourlyRollup,
    ModelAlias,
    ModelPrice,
    PriceChangeHold,
    PriceSync,
    UsageEvent,
)

# The core registers its own tenant admin; this one adds the re-pricing action.
admin.site.unregister(Tenant)
admin.site.register(Tenant, TenantAdmin)
admin.site.register(ModelPrice, ModelPriceAdmin)
admin.site.register(ModelAlias, ModelAliasAdmin)
admin.site.register(CatalogAlias, CatalogAliasAdmin)
admin.site.register(PriceSync, PriceSyncAdmin)
admin.site.register(PriceChangeHold, PriceChangeHoldAdmin)
admin.site.register(UsageEvent, UsageEventAdmin)
admin.site.register(HourlyRollup, HourlyRollupAdmin)
admin.site.register(EventRewrite, EventRewriteAdmin)
admin.site.register(Dimension, DimensionAdmin)
