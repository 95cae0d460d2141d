from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from budgets.counters import budget_field
from budgets.models import Budget
from budgets.scopes import SCOPES, budget_applies, normalized_value, tag_name


@dataclass(frozen=True)
class Spec:
    scope: str
    value: str = ""
    api_key_id: int | None = None


@dataclass(frozen=True)
class Call:
    end_user: str = "alice"
    provider: str = "OpenAI"
    model: str = "gpt-4o-2024-08-06"
    operation: str = "chat"
    tags: dict[str, str] = field(default_factory=lambda: {"team": "search"})
    api_key_id: int | None = 7


def test_every_scope_a_budget_can_have_is_in_the_table():
    assert set(SCOPES) == set(Budget.Scope.values)


@pytest.mark.parametrize(
    ("spec", "applies", "counter_field"),
    [
        (Spec("tenant"), True, "t"),
        (Spec("end_user", "alice"), True, "u:alice"),
        (Spec("end_user", "bob"), False, "u:bob"),
        (Spec("every_end_user"), True, "u:alice"),
        (Spec("api_key", api_key_id=7), True, "k:7"),
        (Spec("api_key", api_key_id=8), False, "k:8"),
        (Spec("provider", "openai"), True, "p:openai"),
        (Spec("model", "gpt-4o"), True, "m:gpt-4o"),
        (Spec("model", "gpt-4o-mini"), False, "m:gpt-4o-mini"),
        (Spec("operation", "chat"), True, "o:chat"),
        (Spec("tag", "team=search"), True, "g:team=search"),
        (Spec("tag", "team=ads"), False, "g:team=ads"),
        (Spec("nonsense"), False, None),
    ],
)
def test_a_scope_says_which_calls_it_covers_and_where_its_spend_is_counted(
    spec, applies, counter_field
):
    assert budget_applies(spec, Call()) is applies
    if counter_field is None:
        with pytest.raises(ValueError, match="unknown scope"):
            budget_field(spec, end_user="alice")
    else:
        assert budget_field(spec, end_user="alice") == counter_field


def test_an_every_end_user_budget_needs_an_end_user():
    assert budget_applies(Spec("every_end_user"), Call(end_user="")) is False


def test_values_are_compared_as_checks_see_them():
    assert normalized_value("provider", " OpenAI ") == "openai"
    assert normalized_value("model", "GPT-4o") == "gpt-4o"
    assert normalized_value("end_user", " Alice ") == "Alice"
    assert (tag_name(Spec("tag", "team=search")), tag_name(Spec("end_user", "a=b"))) == (
        "team",
        None,
    )
