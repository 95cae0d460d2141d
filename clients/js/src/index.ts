/**
 * costmon's client for Node: report LLM usage to costmon and ask it before spending.
 *
 * ```ts
 * import OpenAI from "openai";
 * import { Costmon } from "costmon";
 *
 * const costmon = new Costmon({ url: "https://costmon.example.com", apiKey: "cm_..." });
 * const openai = costmon.wrap(new OpenAI()); // every call's tokens, latency and status reach costmon
 * ```
 * No runtime dependencies: Node 18+'s fetch. `openai` and `@anthropic-ai/sdk` are the
 * application's own; this package only patches the client objects it is given.
 */
export { Costmon, costmonOptions } from "./client.js";
export type { CheckRequest, CostmonOptions, OnUnreachable, TrackEvent, WrapOptions } from "./client.js";
export type { AiSdkMiddleware, AiSdkOptions } from "./integrations/ai-sdk.js";
export type { BudgetStatus, CheckResult, CheckWarning } from "./check.js";
export {
  BudgetExceededError,
  CallDeniedError,
  ConfigurationError,
  CostmonError,
  CostmonUnavailableError,
  EmergencyStopError,
  RateLimitedError,
} from "./errors.js";
export { withContext, currentContext } from "./events.js";
export type { Attributes, ServiceTier, TokenUsage } from "./events.js";
export type { Logger } from "./log.js";
export type { SenderStats } from "./sender.js";
export { VERSION } from "./version.js";
