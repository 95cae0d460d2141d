"""Dashboard pages. Alerts link to `/t/<slug>/`, `/t/<slug>/budgets/<id>/` and
`/t/<slug>/models/<name>/` (alerts.rules.dashboard_link): keep these paths."""

from django.contrib.auth import views as auth_views
from django.urls import path

from usage import views

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
    path("t/<slug:slug>/models/<path:name>/", views.model_detail, name="dashboard-model"),
    path("t/<slug:slug>/users/<path:end_user>/", views.end_user_detail, name="dashboard-end-user"),
    path("t/<slug:slug>/budgets/<int:budget_id>/", views.budget_detail, name="dashboard-budget"),
]
