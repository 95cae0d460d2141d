"""Budgets API: budgets, the pre-flight check, and the emergency stop (one module each)."""

from budgets.api.budgets import BudgetDetailApi, BudgetListApi
from budgets.api.check import CheckApi
from budgets.api.emergency_stop import EmergencyStopApi

__all__ = ["BudgetDetailApi", "BudgetListApi", "CheckApi", "EmergencyStopApi"]
