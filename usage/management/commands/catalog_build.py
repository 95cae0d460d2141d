"""Regenerate the bundled price catalog (usage/data/prices.json) from a public price list.

A maintainer's tool, run when the catalog is refreshed; the product itself never needs the
internet. Without --source it downloads the pinned LiteLLM wheel with pip and reads the price
list LiteLLM ships in it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from usage.price_formats import (
    CONFLICT_RULE,
    FORMATS,
    PARSERS,
    RATE_KEYS,
    TIERS,
    PriceList,
    PriceSourceError,
    apply_overrides,
    parse_json,
)

DATA = Path(__file__).resolve().parents[2] / "data"
DEFAULT_OUTPUT = DATA / "prices.json"
DEFAULT_OVERRIDES = DATA / "price_overrides.json"
# The LiteLLM release the bundled catalog was built from; bump it to refresh.
PINNED_LITELLM_VERSION = "1.110.2"
LITELLM_MEMBER = "litellm/model_prices_and_context_window_backup.json"
SOURCES = {
    "litellm": {
        "name": "LiteLLM model_prices_and_context_window.json",
        "package": "litellm",
        "license": "MIT",
        "url": "https://github.com/BerriAI/litellm/blob/main/model_prices_and_context_window.json",
    },
    "models.dev": {
        "name": "models.dev api.json",
        "package": "models.dev",
        "license": "MIT",
        "url": "https://models.dev/api.json",
    },
}
DATABASE_DECIMAL_PLACES = 6  # ModelPrice's rate columns


class Command(BaseCommand):
    help = (
        "Regenerate the bundled price catalog from LiteLLM's price list (the pinned wheel, "
        "downloaded with pip) or a local --source file, apply the reviewed overrides, write it "
        "sorted and stable, and print what was left out and why."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--source", help="a local price list file instead of the download")
        parser.add_argument("--format", choices=FORMATS, default="litellm")
        parser.add_argument(
            "--litellm-version",
            help=f"the LiteLLM release to download (default {PINNED_LITELLM_VERSION}); with "
            "--source, the release the file came from",
        )
        parser.add_argument("--overrides", default=str(DEFAULT_OVERRIDES), help="'' for none")
        parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
        parser.add_argument("--date", help="generated_at (YYYY-MM-DD); default today, UTC")

    def handle(self, *args: Any, **options: Any) -> None:
        fmt = options["format"]
        generated_at = _date(options["date"])
        if options["source"]:
            path = Path(options["source"])
            if not path.is_file():
                raise CommandError(f"No file {path}.")
            raw = path.read_bytes()
            version = options["litellm_version"] or f"sha256-{hashlib.sha256(raw).hexdigest()[:12]}"
            where = str(path)
            invocation = f"--source {path.name} --format {fmt}"
            if options["litellm_version"]:
                invocation += f" --litellm-version {version}"
        else:
            if fmt != "litellm":
                raise CommandError("Only the litellm format can be downloaded; give --source.")
            version = options["litellm_version"] or PINNED_LITELLM_VERSION
            raw, where = download_litellm(version), f"litellm {version} wheel"
            invocation = f"--litellm-version {version}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError(f"{where} is not UTF-8 text.") from None
        try:
            result = PARSERS[fmt](parse_json(text, where))
            applied = []
            if options["overrides"]:
                overrides_path = Path(options["overrides"])
                applied = apply_overrides(
                    result,
                    parse_json(overrides_path.read_text(encoding="utf-8"), str(overrides_path)),
                    where=overrides_path.name,
                )
        except PriceSourceError as exc:
            raise CommandError(exc.message) from None
        document = catalog_document(
            result,
            fmt=fmt,
            version=version,
            generated_at=generated_at,
            generated_by=f"python manage.py catalog_build {invocation}",
        )
        output = Path(options["output"])
        content = render_catalog(document)
        output.write_text(content, encoding="utf-8")
        self._summary(result, applied, fmt=fmt, version=version)
        size = len(content.encode("utf-8"))
        self.stdout.write(f"Wrote {output} ({len(result.rows):,} rows, {size:,} bytes).")

    def _summary(self, result: PriceList, applied: list[str], *, fmt: str, version: str) -> None:
        out = self.stdout.write
        models = {(r["provider"], r["model"]) for r in result.rows}
        out(
            f"Read {fmt} {version}: {len(result.rows):,} rows for {len(models):,} models, "
            f"{len(result.aliases)} aliases."
        )
        out("Rows per provider (models; rows by service tier):")
        for provider in sorted({r["provider"] for r in result.rows}):
            rows = [r for r in result.rows if r["provider"] == provider]
            tiers = Counter(r.get("service_tier", "standard") for r in rows)
            by_tier = ", ".join(f"{t} {tiers[t]}" for t in TIERS if tiers[t])
            named = len({r["model"] for r in rows})
            out(f"  {provider:<10} {named:>4} models; {len(rows):>4} rows ({by_tier})")
        out("Coverage (in-scope source names the catalog prices):")
        for provider, (priced, total) in result.coverage().items():
            out(f"  {provider:<10} {priced:>4}/{total:<4} {100 * priced / total:5.1f}%")
        out(f"Skipped in-scope names ({len(result.skipped)}):")
        for skip in result.skipped:
            out(f"  {skip.key}: {skip.reason}")
        out(f"Conflicts ({len(result.conflicts)}; kept: {CONFLICT_RULE}):")
        for conflict in result.conflicts:
            out(f"  {conflict.describe()}")
        zero = [r for r in result.rows if not any(Decimal(r[k]) for k in RATE_KEYS if k in r)]
        out(f"Priced at $0 by the source ({len(zero)}; review: free, or a placeholder?):")
        for row in zero:
            out(f"  {row['provider']}/{row['model']} [{row.get('service_tier', 'standard')}]")
        fine = [
            f"{r['provider']}/{r['model']} {k}={r[k]}"
            for r in result.rows
            for k in RATE_KEYS
            if k in r and -Decimal(r[k]).as_tuple().exponent > DATABASE_DECIMAL_PLACES  # type: ignore[operator]
        ]
        if fine:
            out(f"Rates finer than {DATABASE_DECIMAL_PLACES} decimal places ({len(fine)}):")
            for line in fine:
                out(f"  {line}")
        out("Read but not carried (count of entries):")
        for note, count in sorted(result.notes.items()):
            out(f"  {note}: {count}")
        out(f"Overrides applied ({len(applied)}):")
        for line in applied:
            out(f"  {line}")
        providers = {
            k: v for k, v in result.out_of_scope.items() if k.startswith("LiteLLM provider")
        }
        out(f"Out of scope, not read ({sum(result.out_of_scope.values()):,} entries):")
        for reason, count in sorted(result.out_of_scope.items()):
            if reason not in providers:
                out(f"  {reason}: {count}")
        if providers:
            names = ", ".join(f"{k.split(chr(39))[1]} {v}" for k, v in sorted(providers.items()))
            out(f"  other LiteLLM providers ({sum(providers.values()):,} entries): {names}")


def _date(value: str | None) -> str:
    if value is None:
        return datetime.now(UTC).date().isoformat()
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise CommandError(f"--date {value!r} is not a YYYY-MM-DD date.") from None


def download_litellm(version: str) -> bytes:
    """LiteLLM's price list, from its wheel (or sdist) of `version`, fetched with pip."""
    with tempfile.TemporaryDirectory(prefix="catalog-build-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"litellm=={version}",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
            tmp,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise CommandError(f"pip could not download litellm=={version}: {' '.join(tail)}")
        files = sorted(Path(tmp).iterdir())
        if not files:
            raise CommandError(f"pip downloaded nothing for litellm=={version}.")
        return read_member(files[0])


def read_member(archive: Path) -> bytes:
    """The price list inside a LiteLLM wheel or sdist."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            try:
                return wheel.read(LITELLM_MEMBER)
            except KeyError:
                raise CommandError(f"{archive.name} holds no {LITELLM_MEMBER}.") from None
    with tarfile.open(archive) as sdist:
        for member in sdist.getmembers():
            if member.name.endswith("/" + LITELLM_MEMBER) and member.isfile():
                handle = sdist.extractfile(member)
                if handle is not None:
                    return handle.read()
    raise CommandError(f"{archive.name} holds no {LITELLM_MEMBER}.")


def catalog_document(
    result: PriceList, *, fmt: str, version: str, generated_at: str, generated_by: str
) -> dict[str, Any]:
    return {
        "catalog_version": f"{SOURCES[fmt]['package']}-{version}",
        "generated_at": generated_at,
        "generated_by": generated_by,
        "source": {**SOURCES[fmt], "version": version},
        "currency": "USD",
        "unit": "per 1M tokens",
        "prices": result.rows,
        "aliases": result.aliases,
        "source_models": result.source_models,
    }


def render_catalog(document: dict[str, Any]) -> str:
    """Stable text: one price or alias per line, one source name per line, keys in a fixed
    order, so a refresh shows as a short diff that names each model that changed."""

    def dump(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = ["{"]
    for key, value in document.items():
        if key in ("prices", "aliases"):
            items = [f"    {dump(item)}" for item in value]
            body = ",\n".join(items)
            lines.append(f'  "{key}": [\n{body}\n  ],' if items else f'  "{key}": [],')
        elif key == "source_models":
            groups = []
            for provider, names in value.items():
                inner = ",\n".join(f"      {dump(n)}" for n in names)
                groups.append(f"    {dump(provider)}: [\n{inner}\n    ]")
            lines.append('  "source_models": {\n' + ",\n".join(groups) + "\n  },")
        else:
            lines.append(f"  {dump(key)}: {dump(value)},")
    lines[-1] = lines[-1].rstrip(",")
    lines.append("}")
    return "\n".join(lines) + "\n"
