from __future__ import annotations

import pytest

from budgets.models import Budget
from costmon.core.services import api_key_create
from tests.budgets.conftest import check
from tests.helpers import event, post_usage

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("prices", "ready", "unscoped")]


def create(client, **body):
    body.setdefault("name", "Team budget")
    body.setdefault("limit_usd", "10")
    return client.post("/api/v1/budgets/", body, format="json")


def test_an_admin_key_creates_reads_changes_and_deletes_a_budget(
    admin_client_key, ingest_client, acme
):
    post_usage(ingest_client, event())
    created = create(
        admin_client_key,
        name="Search team",
        scope="tag",
        scope_value="team=search",
        period="week",
        limit_usd="0.5",
        thresholds=[50, 90],
        enforcement="hard",
        suggested_model="claude-haiku-4-5",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert {
        k: body[k]
        for k in (
            "name",
            "scope",
            "scope_value",
            "period",
            "limit_usd",
            "thresholds",
            "enforcement",
            "suggested_model",
            "used_usd",
            "status",
            "resets_at",
        )
    } == {
        "name": "Search team",
        "scope": "tag",
        "scope_value": "team=search",
        "period": "week",
        "limit_usd": "0.5",
        "thresholds": [50, 90],
        "enforcement": "hard",
        "suggested_model": "claude-haiku-4-5",
        "used_usd": "0",
        "status": "ok",
        "resets_at": "2026-11-23T00:00:00Z",
    }
    url = f"/api/v1/budgets/{body['id']}/"
    assert admin_client_key.get(url).json()["name"] == "Search team"
    changed = admin_client_key.patch(
        url, {"limit_usd": "0.75", "period": "month"}, format="json"
    ).json()
    assert (changed["limit_usd"], changed["period"], changed["scope"]) == ("0.75", "month", "tag")
    assert admin_client_key.delete(url).status_code == 204
    assert admin_client_key.get(url).status_code == 404


def test_a_new_budget_applies_to_the_next_check_at_once(admin_client_key, ingest_client):
    post_usage(ingest_client, [event(event_id="a"), event(event_id="b")])
    create(admin_client_key, limit_usd="0.002", enforcement="hard")
    assert check(ingest_client).json()["reasons"] == ["budget_exceeded"]


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"scope": "galaxy"}, "scope", "not a valid choice"),
        ({"limit_usd": "-5"}, "limit_usd", "greater than or equal to 0.000001"),
        ({"limit_usd": "lots"}, "limit_usd", "decimal number"),
        ({"thresholds": [80, 120]}, "thresholds", "outside 0-100%"),
        ({"thresholds": [0]}, "thresholds", "outside 0-100%"),
        ({"thresholds": []}, "thresholds", "list of percentages"),
        ({"scope": "end_user"}, "scope_value", "Say which end user"),
        ({"scope": "tag", "scope_value": "team"}, "scope_value", "name=value"),
        ({"scope": "tenant", "scope_value": "x"}, "scope_value", "Leave empty"),
        ({"period": "rolling"}, "rolling_days", "number of days"),
        ({"period": "rolling", "rolling_days": 400}, "rolling_days", "less than or equal to 90"),
        ({"scope": "api_key"}, "api_key", "Choose the API key"),
        ({"scope": "api_key", "api_key": 2**64}, "api_key", "less than or equal to"),
        ({"enforcement": "strict"}, "enforcement", "not a valid choice"),
    ],
)
def test_bad_budgets_get_a_400_naming_the_field(admin_client_key, body, field, fragment):
    response = create(admin_client_key, **body)
    assert response.status_code == 400, response.content
    data = response.json()
    messages = data.get("fields", data).get(field)
    assert messages, data
    assert any(fragment in m for m in messages), messages
    assert Budget.objects.unscoped().count() == 0


def test_a_budget_for_another_tenants_key_is_refused(admin_client_key, outsider):
    foreign = api_key_create(tenant=outsider, scopes="ingest").api_key
    response = create(admin_client_key, scope="api_key", api_key=foreign.pk)
    assert response.status_code == 400
    message = f"No API key {foreign.pk} in this tenant."
    assert response.json() == {
        "detail": message,
        "field": "api_key",
        "errors": [{"field": "api_key", "message": message}],
    }


def test_a_read_key_sees_budgets_but_cannot_change_them(read_client, admin_client_key):
    budget_id = create(admin_client_key).json()["id"]
    assert read_client.get("/api/v1/budgets/").status_code == 200
    assert create(read_client).status_code == 403
    assert (
        read_client.patch(
            f"/api/v1/budgets/{budget_id}/", {"limit_usd": "1"}, format="json"
        ).status_code
        == 403
    )
    assert read_client.delete(f"/api/v1/budgets/{budget_id}/").status_code == 403


def test_an_outsider_can_neither_see_nor_affect_acmes_budgets(
    admin_client_key, outsider_client, ingest_client
):
    budget_id = create(admin_client_key, limit_usd="0.002", enforcement="hard").json()["id"]
    url = f"/api/v1/budgets/{budget_id}/"
    assert outsider_client.get("/api/v1/budgets/").json()["results"] == []
    assert outsider_client.get(url).status_code == 404
    assert outsider_client.patch(url, {"limit_usd": "1000"}, format="json").status_code == 404
    assert outsider_client.delete(url).status_code == 404
    # Acme's budget neither applies to nor counts the outsider's spend.
    post_usage(outsider_client, [event(event_id="o1"), event(event_id="o2")])
    assert check(outsider_client).json()["budgets"] == []
    assert check(ingest_client).json()["budgets"][0]["used_usd"] == "0"
    assert str(Budget.objects.unscoped().get(pk=budget_id).limit_usd) == "0.002000"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"estimated_input_tokens": "many"}, "estimated_input_tokens"),
        ({"estimated_output_tokens": -1}, "estimated_output_tokens"),
        ({"estimated_cost_usd": "cheap"}, "estimated_cost_usd"),
        ({"estimated_cost_usd": True}, "estimated_cost_usd"),
        ({"estimated_cost_usd": "-1"}, "estimated_cost_usd"),
        ({"tags": ["a"]}, "tags"),
        ({"reserve": "yes"}, "reserve"),
        ({"end_user": 7}, "end_user"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_check_gets_a_400_naming_the_field(ingest_client, body, field):
    response = check(ingest_client, **body)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["field"] == field and error["message"]


def test_a_malformed_check_body_gets_a_400(ingest_client):
    response = ingest_client.post("/api/v1/check/", data=b"{nope", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("Malformed JSON")


def test_the_check_needs_a_key_with_the_ingest_scope(read_client, client):
    assert check(read_client).status_code == 403
    assert client.post("/api/v1/check/", {}, content_type="application/json").status_code == 401
