/** The pre-flight check's answer (`POST /api/v1/check/`), in the API's own shape. */
import {
  BudgetExceededError,
  CallDeniedError,
  CostmonUnavailableError,
  EmergencyStopError,
  RateLimitedError,
} from "./errors.js";

export const UNREACHABLE = "costmon_unreachable";

/** One budget the call falls under, with its spend this period. Amounts are decimal strings. */
export interface BudgetStatus {
  id: number;
  name: string;
  scope: string;
  end_user?: string | null;
  period: string;
  limit_usd: string;
  used_usd: string;
  reserved_usd?: string;
  remaining_usd: string;
  percent: number;
  status: "ok" | "warning" | "critical" | "exceeded" | string;
  resets_at: string | null;
  enforcement?: "soft" | "hard" | string;
  [field: string]: unknown;
}

export interface CheckWarning {
  code: string;
  message: string;
  budget_id?: number;
  [field: string]: unknown;
}

/**
 * costmon's answer to "may this call spend?", as the API gives it, plus two fields of the
 * client's: `unreachable` (costmon did not answer; `allowed` is then the client's
 * `onUnreachable` policy) and `retry_after` (seconds, from a rate-limited answer's Retry-After).
 */
export interface CheckResult {
  allowed: boolean;
  reasons: string[];
  budgets: BudgetStatus[];
  warnings: CheckWarning[];
  suggested_model: string | null;
  reservation_id: string | null;
  estimated_cost_usd: string | null;
  source?: string;
  unreachable: boolean;
  retry_after: number | null;
  [field: string]: unknown;
}

export function fromAnswer(data: Record<string, unknown>, retryAfter: number | null): CheckResult {
  return {
    ...data,
    allowed: data.allowed === true,
    reasons: Array.isArray(data.reasons) ? data.reasons.map(String) : [],
    budgets: Array.isArray(data.budgets) ? (data.budgets as BudgetStatus[]) : [],
    warnings: Array.isArray(data.warnings) ? (data.warnings as CheckWarning[]) : [],
    suggested_model: typeof data.suggested_model === "string" && data.suggested_model ? data.suggested_model : null,
    reservation_id: typeof data.reservation_id === "string" && data.reservation_id ? data.reservation_id : null,
    estimated_cost_usd: typeof data.estimated_cost_usd === "string" ? data.estimated_cost_usd : null,
    unreachable: false,
    retry_after: retryAfter,
  };
}

/** The answer the client gives itself when costmon cannot be asked. */
export function fallback(allowed: boolean, problem: string): CheckResult {
  return {
    allowed,
    reasons: allowed ? [] : [UNREACHABLE],
    budgets: [],
    warnings: [{ code: UNREACHABLE, message: problem }],
    suggested_model: null,
    reservation_id: null,
    estimated_cost_usd: null,
    unreachable: true,
    retry_after: null,
  };
}

/** Throw the CallDeniedError subclass that fits the first reason, when not allowed. */
export function throwIfDenied(result: CheckResult): void {
  if (result.allowed) return;
  const reasons = new Set(result.reasons);
  let kind: typeof CallDeniedError = CallDeniedError;
  if (result.unreachable) kind = CostmonUnavailableError;
  else if (reasons.has("emergency_stop")) kind = EmergencyStopError;
  else if (reasons.has("budget_exceeded")) kind = BudgetExceededError;
  else if (reasons.has("rate_limited")) kind = RateLimitedError;
  const messages = result.warnings.map((w) => w.message).filter((m): m is string => typeof m === "string" && !!m);
  if (reasons.has("budget_exceeded")) {
    for (const b of result.budgets) {
      if (b.enforcement === "hard") messages.push(`budget '${b.name}' (${b.period}): ${b.used_usd} of ${b.limit_usd} USD used`);
    }
  }
  let detail = messages.join("; ") || result.reasons.join(", ") || "denied";
  if (result.suggested_model) detail += ` (suggested model: ${result.suggested_model})`;
  throw new kind(`costmon denied the call: ${detail}`, result);
}
