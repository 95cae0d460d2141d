"""Which price applies: a reported (provider, model, tier, time) resolved through the catalog.

Name resolution is right rather than forgiving. For a reported (provider, model) it tries, in
order, and takes the first step that finds a price (a tenant's own rate before the list price
within a step):
1. the tenant's aliases (its deployment names, ARNs, proxy routes);
2. the exact name;
3. the catalog's aliases (a provider's `-latest` name pointing at a dated model);
4. the name without deployment decorations (Google's `models/`, Bedrock's region prefix and
   `-v1:0` version, Vertex's `@default`; Vertex's `@20240620` is Anthropic's `-20240620`);
5. a catalog row whose `match_pattern` says its price applies to other names (a family's price
   for snapshots the catalog does not list one by one).
A dated snapshot never falls back to its family's price unless step 5 says so, and a name found
nowhere stays unpriced (never a silent $0).

Pure code over plain data (`usage.pricing`'s types); `usage.catalog.catalog_for` loads it.
"""

from __future__ import annotations

import bisect
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from usage.pricing import (
    PROVIDER_FAMILIES,
    RESELLERS,
    STANDARD,
    Price,
    deployment_names,
    normalise_provider,
)


@dataclass(frozen=True)
class Alias:
    provider: str  # "" matches any provider
    alias: str
    target_provider: str
    target_model: str


@dataclass(frozen=True)
class Resolution:
    """The price an event was charged at and how its name led there."""

    price: Price
    rule: str  # tenant_alias | exact | catalog_alias | deployment_name | pattern | model_name
    name: str  # the catalog name the rule arrived at
    requested_tier: str = STANDARD

    @property
    def tier_fallback(self) -> bool:
        """The event asked for a tier the catalog has no price for: standard rates applied."""
        return self.price.service_tier != self.requested_tier


@dataclass
class _History:
    """One model's price rows in one tier, oldest first, for bisecting by time."""

    starts: list[datetime] = field(default_factory=list)
    prices: list[Price] = field(default_factory=list)

    def at(self, when: datetime) -> Price | None:
        i = bisect.bisect_right(self.starts, when)
        return self.prices[i - 1] if i else None


_Tiers = dict[str, _History]  # tier -> that tier's price history


class PriceIndex:
    """One scope's price rows indexed for name resolution: a tenant's own rates, or the global
    list. Built once and only read afterwards, so the global list's index is shared by every
    tenant's `Catalog` in a process (about 1,300 rows: building it is most of a catalog's
    cost, and a per-tenant copy would cost megabytes a tenant)."""

    def __init__(self, prices: Iterable[Price]) -> None:
        self.exact: dict[tuple[str, str], _Tiers] = {}  # (provider, model) -> tiers
        self.by_model: dict[str, list[str]] = {}  # model -> providers that price it
        patterns: list[tuple[str, str, str]] = []  # (provider, pattern, model)
        for price in sorted(prices, key=lambda p: p.effective_from):
            provider = price.provider.lower()
            model = price.model.lower()
            tiers = self.exact.setdefault((provider, model), {})
            history = tiers.setdefault(price.service_tier, _History())
            history.starts.append(price.effective_from)
            history.prices.append(price)
            providers = self.by_model.setdefault(model, [])
            if provider not in providers:
                providers.append(provider)
            if price.match_pattern:
                entry = (provider, price.match_pattern.lower(), model)
                if entry not in patterns:
                    patterns.append(entry)
        # The most specific pattern wins: the one with the most literal characters.
        patterns.sort(key=lambda p: -len(p[1].replace("*", "")))
        self.patterns = tuple(patterns)


class Catalog:
    """Every price a tenant can be charged: its own rates first, then the global list."""

    def __init__(
        self,
        prices: Iterable[Price] = (),
        aliases: Iterable[Alias] = (),
        catalog_aliases: Iterable[Alias] = (),
        *,
        shared: PriceIndex | None = None,
    ) -> None:
        """`prices` holds tenant rows (`tenant_id` set) and global ones; `shared`, when given,
        is the global list already indexed, and `prices` then adds only the tenant's rows."""
        prices = list(prices)
        own = [p for p in prices if p.tenant_id is not None]
        listed = [p for p in prices if p.tenant_id is None]
        if shared is not None and listed:
            raise ValueError("pass the global rows either as prices or as the shared index")
        # Scope 0 is the tenant's own rates, scope 1 the global list.
        self._scopes = (PriceIndex(own), shared if shared is not None else PriceIndex(listed))
        self._aliases = {(a.provider.lower(), a.alias.lower()): a for a in aliases}
        self._catalog_aliases = {(a.provider.lower(), a.alias.lower()): a for a in catalog_aliases}
        # Name resolution is pure and names repeat endlessly: remember it, up to a bound.
        self._found: dict[tuple[str, str], list[tuple[str, str, _Tiers]]] = {}

    # --- name resolution ------------------------------------------------------------------

    def _candidates(self, provider: str, model: str) -> list[tuple[str, str, _Tiers]]:
        """(rule, catalog name, tiers) for a reported name, best first."""
        key = (provider, model)
        found = self._found.get(key)
        if found is None:
            found = self._find(normalise_provider(provider), model.strip())
            if len(self._found) < 10_000:
                self._found[key] = found
        return found

    def _lookup(self, provider: str, name: str) -> list[tuple[str, _Tiers]]:
        """The rows under this exact name: the provider's own, else its family's, else (for a
        provider the catalog does not know, such as a gateway) the one first-party seller's."""
        families = PROVIDER_FAMILIES.get(provider, ())
        found = []
        for index in self._scopes:
            for prov in (provider, *families):
                if tiers := index.exact.get((prov, name)):
                    found.append((prov, tiers))
                    break
            else:
                sellers = [p for p in index.by_model.get(name, []) if p not in RESELLERS]
                if len(sellers) == 1 and provider not in RESELLERS:
                    found.append((sellers[0], index.exact[(sellers[0], name)]))
        return found

    def _find(self, provider: str, model: str) -> list[tuple[str, str, _Tiers]]:
        lowered = model.lower()
        alias = self._aliases.get((provider, lowered)) or self._aliases.get(("", lowered))
        if alias is not None:
            target = alias.target_model.lower()
            found = self._lookup(normalise_provider(alias.target_provider), target)
            return [("tenant_alias", target, tiers) for _, tiers in found]
        if found := self._lookup(provider, lowered):
            return [("exact", lowered, tiers) for _, tiers in found]
        for name in (lowered, *deployment_names(lowered)):
            catalog_alias = self._catalog_aliases.get(
                (provider, name)
            ) or self._catalog_aliases.get(("", name))
            if catalog_alias is not None:
                target = catalog_alias.target_model.lower()
                target_provider = normalise_provider(catalog_alias.target_provider)
                if found := self._lookup(target_provider, target):
                    return [("catalog_alias", target, tiers) for _, tiers in found]
        for name in deployment_names(lowered):
            if found := self._lookup(provider, name):
                return [("deployment_name", name, tiers) for _, tiers in found]
        families = (provider, *PROVIDER_FAMILIES.get(provider, ()))
        for name in (lowered, *deployment_names(lowered)):
            matches = [
                ("pattern", target, index.exact[(prov, target)])
                for index in self._scopes
                for prov, pattern, target in index.patterns
                if prov in families and fnmatch.fnmatchcase(name, pattern)
            ]
            if matches:
                return matches
        return []

    def resolve(
        self, provider: str, model: str, when: datetime, tier: str = STANDARD
    ) -> Resolution | None:
        """The price in force at `when` for a reported name and tier, and how it was found.

        A tier the catalog does not price for that model falls back to the standard tier (the
        explanation says so); a name found nowhere is None: unpriced."""
        for rule, name, tiers in self._candidates(provider, model):
            for wanted in dict.fromkeys((tier, STANDARD)):
                history = tiers.get(wanted)
                if history is not None and (price := history.at(when)) is not None:
                    return Resolution(price, rule, name, tier)
        return None

    def price_at(
        self, provider: str, model: str, when: datetime, tier: str = STANDARD
    ) -> Price | None:
        found = self.resolve(provider, model, when, tier)
        return found.price if found is not None else None

    def models_of(self, provider: str, when: datetime) -> list[Price]:
        """The global standard list prices of one provider's models in force at `when` (tenant
        overrides are left out: they price the models a tenant uses, not the ones it could
        switch to)."""
        wanted = normalise_provider(provider)
        found = []
        for (prov, _model), tiers in self._scopes[1].exact.items():
            history = tiers.get(STANDARD)
            if prov == wanted and history and (price := history.at(when)):
                found.append(price)
        return sorted(found, key=lambda p: p.model)
