"""`catalog_build`: the one command that regenerates the bundled catalog from LiteLLM's list."""

from __future__ import annotations

import io
import json
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from usage.management.commands.catalog_build import DEFAULT_OUTPUT, PINNED_LITELLM_VERSION


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("catalog_build", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def chat(provider: str, **prices: Any) -> dict[str, Any]:
    return {"litellm_provider": provider, "mode": "chat", **prices}


SOURCE = {
    "sample_spec": {"litellm_provider": "one of ...", "input_cost_per_token": 0.0},
    "gpt-4o-mini": chat(
        "openai",
        input_cost_per_token=1.5e-07,
        output_cost_per_token=6e-07,
        input_cost_per_token_batches=7.5e-08,
        output_cost_per_token_batches=3e-07,
        deprecation_date="2027-01-14",
        source="https://developers.openai.com/api/docs/pricing",
    ),
    "gemini/gemini-2.5-pro": chat(
        "gemini",
        input_cost_per_token=1.25e-06,
        output_cost_per_token=1e-05,
        input_cost_per_token_above_200k_tokens=2.5e-06,
        output_cost_per_token_above_200k_tokens=1.5e-05,
    ),
    "deepseek/deepseek-v3": chat("deepseek", input_cost_per_token=2.7e-07),
    "deepseek-v3": chat("deepseek", input_cost_per_token=2.8e-07),
    "medlm-large": chat("vertex_ai-language-models", input_cost_per_character=5e-06),
    "embed-multilingual-light-v3.0": {
        "litellm_provider": "cohere",
        "mode": "embedding",
        "input_cost_per_token": 0.0001,
    },
    "together_ai/llama": chat("together_ai", input_cost_per_token=1e-07),
    "gpt-mini-latest": {"alias_of": "gpt-4o-mini"},
}
OVERRIDES = {
    "prices": [
        {
            "provider": "cohere",
            "model": "embed-multilingual-light-v3.0",
            "set": {"input_per_mtok": "0.10"},
            "reason": "a thousand times Cohere's price",
            "url": "https://cohere.com/pricing",
            "reviewed": "2026-12-01",
        }
    ],
    "aliases": [],
}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    source = tmp_path / "model_prices.json"
    source.write_text(json.dumps(SOURCE))
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps(OVERRIDES))
    return {"source": source, "overrides": overrides, "output": tmp_path / "prices.json"}


def build(files: dict[str, Path], *extra: str) -> str:
    return run(
        "--source",
        str(files["source"]),
        "--litellm-version",
        "1.2.3",
        "--overrides",
        str(files["overrides"]),
        "--output",
        str(files["output"]),
        "--date",
        "2026-12-01",
        *extra,
    )


def test_it_writes_a_sorted_stable_catalog_with_its_source_in_the_header(files):
    build(files)
    text = files["output"].read_text()
    lines = text.splitlines()
    assert lines[:8] == [
        "{",
        '  "catalog_version": "litellm-1.2.3",',
        '  "generated_at": "2026-12-01",',
        '  "generated_by": "python manage.py catalog_build --source model_prices.json '
        '--format litellm --litellm-version 1.2.3",',
        '  "source": {"name": "LiteLLM model_prices_and_context_window.json", "package": '
        '"litellm", "license": "MIT", "url": "https://github.com/BerriAI/litellm/blob/main/'
        'model_prices_and_context_window.json", "version": "1.2.3"},',
        '  "currency": "USD",',
        '  "unit": "per 1M tokens",',
        '  "prices": [',
    ]
    # One price per line, sorted by provider, model, then tier.
    assert lines[8:14] == [
        '    {"provider": "cohere", "model": "embed-multilingual-light-v3.0", "mode": "embedding", '
        '"input_per_mtok": "0.1", "source": "https://cohere.com/pricing", "source_date": "2026-12-01"},',
        '    {"provider": "deepseek", "model": "deepseek-v3", "mode": "chat", "input_per_mtok": "0.27"},',
        '    {"provider": "google", "model": "gemini-2.5-pro", "mode": "chat", "input_per_mtok": "1.25", '
        '"output_per_mtok": "10", "long_context_threshold": 200000, "long_input_per_mtok": "2.5", '
        '"long_output_per_mtok": "15"},',
        '    {"provider": "openai", "model": "gpt-4o-mini", "mode": "chat", "deprecation_date": '
        '"2027-01-14", "input_per_mtok": "0.15", "output_per_mtok": "0.6", "source": '
        '"https://developers.openai.com/api/docs/pricing"},',
        '    {"provider": "openai", "model": "gpt-4o-mini", "service_tier": "batch", "mode": "chat", '
        '"deprecation_date": "2027-01-14", "input_per_mtok": "0.075", "output_per_mtok": "0.3", '
        '"source": "https://developers.openai.com/api/docs/pricing"}',
        "  ],",
    ]
    document = json.loads(text)
    assert document["aliases"] == [
        {
            "provider": "openai",
            "alias": "gpt-mini-latest",
            "target_provider": "openai",
            "target_model": "gpt-4o-mini",
            "reason": "LiteLLM: gpt-mini-latest is an alias of gpt-4o-mini",
        }
    ]
    assert document["source_models"] == {
        "cohere": ["embed-multilingual-light-v3.0"],
        "deepseek": ["deepseek-v3"],
        "google": ["gemini-2.5-pro"],
        "openai": ["gpt-4o-mini"],
        "vertex": ["medlm-large"],
    }
    build(files)
    assert files["output"].read_text() == text  # the same source gives the same bytes


def test_it_prints_rows_per_provider_coverage_skips_conflicts_and_overrides(files):
    out = build(files)
    assert "Read litellm 1.2.3: 5 rows for 4 models, 1 aliases." in out
    assert "  openai        1 models;    2 rows (standard 1, batch 1)" in out
    assert "  vertex        0/1      0.0%" in out
    assert "  google        1/1    100.0%" in out
    assert "Skipped in-scope names (1):\n  medlm-large: priced per character, not per token" in out
    assert (
        "deepseek/deepseek-v3 [standard]: kept deepseek/deepseek-v3 "
        "(deepseek/deepseek-v3: input_per_mtok=0.27; deepseek-v3: input_per_mtok=0.28)"
    ) in out
    assert (
        "Overrides applied (1):\n  set cohere/embed-multilingual-light-v3.0 [standard] input_per_mtok=0.1"
        in out
    )
    assert "other LiteLLM providers (1 entries): together_ai 1" in out
    assert f"Wrote {files['output']} (5 rows," in out


def test_a_bad_source_or_a_stale_override_stops_the_build_and_keeps_the_old_file(files):
    files["output"].write_text("the catalog as it was\n")
    files["source"].write_text(json.dumps({"gpt-5": chat("openai", input_cost_per_token=-1)}))
    with pytest.raises(
        CommandError, match="LiteLLM entry 'gpt-5': input_cost_per_token is negative"
    ):
        build(files)
    files["source"].write_text(json.dumps({"gpt-5": chat("openai", input_cost_per_token=1e-06)}))
    with pytest.raises(
        CommandError,
        match=r"overrides.json: prices\[0\]: no cohere/embed-multilingual-light-v3.0 \[standard\] "
        "row to set; the source changed",
    ):
        build(files)
    assert files["output"].read_text() == "the catalog as it was\n"
    with pytest.raises(CommandError, match="--date '1 Dec' is not a YYYY-MM-DD date"):
        build(files, "--date", "1 Dec")


def fake_litellm_wheel(directory: Path, version: str, prices: dict[str, Any]) -> None:
    """A wheel laid out as LiteLLM's is, for pip to find with --find-links and no index."""
    with zipfile.ZipFile(directory / f"litellm-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr("litellm/model_prices_and_context_window_backup.json", json.dumps(prices))
        info = f"litellm-{version}.dist-info"
        wheel.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: litellm\nVersion: {version}\n"
        )
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")


@pytest.mark.slow
def test_without_a_source_it_downloads_the_litellm_wheel_with_pip(files, tmp_path, monkeypatch):
    links = tmp_path / "links"
    links.mkdir()
    fake_litellm_wheel(links, "9.9.9", SOURCE)
    # pip itself runs, against a local directory instead of PyPI.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    out = run(
        "--litellm-version",
        "9.9.9",
        "--overrides",
        str(files["overrides"]),
        "--output",
        str(files["output"]),
    )
    assert "Read litellm 9.9.9: 5 rows for 4 models" in out
    document = json.loads(files["output"].read_text())
    assert document["catalog_version"] == "litellm-9.9.9"
    assert document["generated_by"] == "python manage.py catalog_build --litellm-version 9.9.9"
    with pytest.raises(CommandError, match=r"pip could not download litellm==0.0.1"):
        run("--litellm-version", "0.0.1", "--output", str(files["output"]))


# --- the bundled catalog ------------------------------------------------------------------------


def bundled() -> tuple[dict[str, Any], dict[tuple[str, str, str], dict[str, Any]]]:
    document = json.loads(DEFAULT_OUTPUT.read_text())
    rows = {
        (r["provider"], r["model"], r.get("service_tier", "standard")): r
        for r in document["prices"]
    }
    return document, rows


def rates(row: dict[str, Any], *names: str) -> tuple[str | int | None, ...]:
    return tuple(row.get(name) for name in names)


IN_OUT = ("input_per_mtok", "output_per_mtok")


def test_the_bundled_catalog_names_its_source_and_how_it_was_built():
    document, _ = bundled()
    assert document["catalog_version"] == f"litellm-{PINNED_LITELLM_VERSION}"
    assert document["generated_by"] == (
        f"python manage.py catalog_build --litellm-version {PINNED_LITELLM_VERSION}"
    )
    assert (document["source"]["package"], document["source"]["license"]) == ("litellm", "MIT")
    assert (document["currency"], document["unit"]) == ("USD", "per 1M tokens")
    assert DEFAULT_OUTPUT.read_text().endswith("}\n")


def test_the_bundled_catalog_has_the_prices_the_issue_names():
    _, rows = bundled()
    assert rates(rows["openai", "gpt-5", "standard"], *IN_OUT, "cached_input_per_mtok") == (
        "1.25",
        "10",
        "0.125",
    )
    assert rates(rows["openai", "o4-mini", "standard"], *IN_OUT) == ("1.1", "4.4")
    sonnet = rows["anthropic", "claude-sonnet-4-5", "standard"]
    assert rates(
        sonnet,
        *IN_OUT,
        "cached_input_per_mtok",
        "cache_write_per_mtok",
        "cache_write_1h_per_mtok",
    ) == ("3", "15", "0.3", "3.75", "6")
    for provider in ("google", "vertex"):
        pro = rows[provider, "gemini-2.5-pro", "standard"]
        assert rates(
            pro, *IN_OUT, "long_context_threshold", "long_input_per_mtok", "long_output_per_mtok"
        ) == ("1.25", "10", 200000, "2.5", "15")
    assert rates(rows["openai", "gpt-4o-2024-05-13", "standard"], *IN_OUT) == ("5", "15")
    assert rates(rows["openai", "gpt-4o-mini", "batch"], *IN_OUT) == ("0.075", "0.3")
    assert rates(rows["deepseek", "deepseek-chat", "standard"], *IN_OUT) == ("0.28", "0.42")
    assert rates(rows["mistral", "mistral-large-latest", "standard"], *IN_OUT) == ("0.5", "1.5")
    for provider, model in [
        ("anthropic", "claude-sonnet-4-6"),
        ("google", "gemini-3.5-flash"),
        ("xai", "grok-4.5"),
        ("deepseek", "deepseek-v4-pro"),
    ]:
        assert Decimal(rows[provider, model, "standard"]["input_per_mtok"]) > 0


def test_the_bundled_catalog_keeps_the_design_notes_figures_that_still_hold():
    _, rows = bundled()
    assert rates(rows["openai", "gpt-4o-mini", "standard"], *IN_OUT) == ("0.15", "0.6")
    assert rates(rows["openai", "gpt-4o", "standard"], *IN_OUT) == ("2.5", "10")
    assert rates(rows["openai", "gpt-3.5-turbo", "standard"], *IN_OUT) == ("0.5", "1.5")
    assert rates(rows["anthropic", "claude-haiku-4-5", "standard"], *IN_OUT) == ("1", "5")
    assert rows["openai", "text-embedding-3-large", "standard"]["input_per_mtok"] == "0.13"
    # "Claude Haiku" at $0.25/$1.25 is Claude 3 Haiku's price, now listed on Vertex only.
    assert rates(rows["vertex", "claude-3-haiku", "standard"], *IN_OUT) == ("0.25", "1.25")
    # Opus 4.1 at $15/$75 (Bedrock; Anthropic's own list no longer has it): cache reads $1.50.
    opus = rows["bedrock", "anthropic.claude-opus-4-1-20250805-v1:0", "standard"]
    assert rates(opus, *IN_OUT, "cached_input_per_mtok") == ("15", "75", "1.5")


def test_the_bundled_catalog_carries_the_reviewed_overrides():
    _, rows = bundled()
    light = rows["cohere", "embed-multilingual-light-v3.0", "standard"]
    assert (light["input_per_mtok"], light["source"]) == ("0.1", "https://cohere.com/pricing")
    assert ("cohere", "command-a-plus-05-2026", "standard") not in rows
    assert rows["openai", "ft:gpt-4o-mini-2024-07-18", "standard"]["match_pattern"] == (
        "ft:gpt-4o-mini-2024-07-18:*"
    )
