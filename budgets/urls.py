from django.urls import path

from budgets import api
from costmon.core import converters

converters.register()

urlpatterns = [
    path("budgets/", api.BudgetListApi.as_view(), name="api-budgets"),
    path("budgets/<id:budget_id>/", api.BudgetDetailApi.as_view(), name="api-budget"),
    path("check/", api.CheckApi.as_view(), name="api-check"),
    path("emergency-stop/", api.EmergencyStopApi.as_view(), name="api-emergency-stop"),
]
