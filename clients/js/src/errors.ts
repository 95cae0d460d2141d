/**
 * Errors this package throws: only from `check({ throwOnDeny: true })` and misconfiguration.
 * Reporting usage never throws: a slow or absent costmon must not break the application.
 */
import type { CheckResult } from "./check.js";

/** Base of every error this package throws. */
export class CostmonError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The client was not given what it needs (URL, API key) or was given something invalid. */
export class ConfigurationError extends CostmonError {}

/** The pre-flight check said no; `result` holds costmon's full answer. */
export class CallDeniedError extends CostmonError {
  readonly result: CheckResult;

  constructor(message: string, result: CheckResult) {
    super(message);
    this.result = result;
  }

  get reasons(): string[] {
    return this.result.reasons;
  }
}

/** A hard budget would be exceeded (`result.suggested_model` may name a cheaper model). */
export class BudgetExceededError extends CallDeniedError {}

/** The tenant's (or the global) emergency stop is on. */
export class EmergencyStopError extends CallDeniedError {}

/** A rate limit applies; try again after `retryAfter` seconds. */
export class RateLimitedError extends CallDeniedError {
  readonly retryAfter: number | null;

  constructor(message: string, result: CheckResult) {
    super(message, result);
    this.retryAfter = result.retry_after;
  }
}

/** costmon did not answer and the client is set to `onUnreachable: "deny"`. */
export class CostmonUnavailableError extends CallDeniedError {}
