"""Dashboard pages. Alerts link to `/t/<slug>/`, `/t/<slug>/budgets/<id>/` and
`/t/<slug>/models/<name>/` (alerts.rules.dashboard_link): keep these paths. Links to a model or
end user are built by `usage.links`, never by `reverse()`: a name that cannot be a path segment
goes in the query string (`/t/<slug>/models/?name=...`)."""

from django.contrib.auth import views as auth_views
from django.urls import path, register_converter

from costmon.core import converters
from costmon.web.dashboard import alerts, statements, views


class AnyTextConverter:
    """One or more characters of any kind, `/` and line feeds included (the `path` converter
    stops at a line feed)."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(AnyTextConverter, "anytext")
converters.register()

urlpatterns = [
    # Members log in here (the admin's login page accepts staff only).
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    # Admin's logout only logs staff out; members who are not staff need this one.
    path(
        "logout/",
        auth_views.LogoutView.as_view(next_page="/login/"),
        name="dashboard-logout",
    ),
    path("t/<slug:slug>/", views.overview, name="dashboard-overview"),
    path("t/<slug:slug>/models/", views.model_detail, name="dashboard-model-by-name"),
    path("t/<slug:slug>/models/<anytext:name>/", views.model_detail, name="dashboard-model"),
    path("t/<slug:slug>/users/", views.end_user_detail, name="dashboard-end-user-by-name"),
    path(
        "t/<slug:slug>/users/<anytext:end_user>/",
        views.end_user_detail,
        name="dashboard-end-user",
    ),
    path("t/<slug:slug>/budgets/<id:budget_id>/", views.budget_detail, name="dashboard-budget"),
    path("t/<slug:slug>/statements/", statements.statement, name="dashboard-statement"),
    path(
        "t/<slug:slug>/alerts/<id:alert_id>/acknowledge/",
        alerts.acknowledge,
        name="dashboard-alert-acknowledge",
    ),
]
