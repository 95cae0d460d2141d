from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from costmon.core.env import env_bool, env_decimal, env_int, env_list


@pytest.mark.parametrize(
    ("reader", "value", "default"),
    [(env_bool, "maybe", False), (env_int, "ten", 1), (env_decimal, "1.2.3", None)],
)
def test_a_bad_value_names_the_variable(monkeypatch, reader, value, default):
    monkeypatch.setenv("COSTMON_SOMETHING", value)
    with pytest.raises(ImproperlyConfigured, match="COSTMON_SOMETHING"):
        reader("COSTMON_SOMETHING", default)


def test_values_are_parsed(monkeypatch):
    monkeypatch.setenv("A_BOOL", "yes")
    monkeypatch.setenv("AN_INT", "42")
    monkeypatch.setenv("A_LIST", "a.example, b.example,")
    assert env_bool("A_BOOL", False) is True
    assert env_int("AN_INT", 0) == 42
    assert env_list("A_LIST", []) == ["a.example", "b.example"]
    assert env_bool("UNSET_BOOL", False) is False


def test_an_int_below_its_minimum_is_refused(monkeypatch):
    monkeypatch.setenv("COSTMON_MAX_BATCH_EVENTS", "0")
    with pytest.raises(ImproperlyConfigured, match="COSTMON_MAX_BATCH_EVENTS must be at least 1"):
        env_int("COSTMON_MAX_BATCH_EVENTS", 5000, minimum=1)


def test_production_settings_need_a_secret_key(tmp_path):
    import subprocess
    import sys

    env = {
        "DATABASE_URL": "postgres://x@127.0.0.1/x",
        "PATH": "/usr/bin:/bin",
        "COSTMON_VAR_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", "import costmon.settings"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr
