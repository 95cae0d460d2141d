/** `Costmon`: report usage, wrap SDK clients, and ask the pre-flight check. */
import { type CheckResult, fallback, fromAnswer, throwIfDenied } from "./check.js";
import { ConfigurationError } from "./errors.js";
import {
  type Attributes,
  type EventFields,
  type ServiceTier,
  buildEvent,
  checkedTier,
  currentContext,
  decimalText,
  merged,
  newEventId,
  withContext,
} from "./events.js";
import { type AiSdkMiddleware, type AiSdkOptions, aiSdkMiddleware } from "./integrations/ai-sdk.js";
import type { Recorder } from "./integrations/base.js";
import { wrapClient } from "./integrations/index.js";
import { type Logger, consoleLogger, say } from "./log.js";
import { Sender, type SenderStats } from "./sender.js";
import { type FetchLike, NoAnswer, Transport, parseJson, retryAfterSeconds } from "./transport.js";

const CHECK_PATH = "/api/v1/check/";

export type OnUnreachable = "allow" | "deny";

export interface CostmonOptions {
  /** costmon's base URL; default `process.env.COSTMON_URL`. */
  url?: string;
  /** An API key with the ingest scope; default `process.env.COSTMON_API_KEY`. */
  apiKey?: string;
  /** Defaults for every event of this client. */
  endUser?: string;
  operation?: string;
  sessionId?: string;
  tags?: Record<string, string>;
  /** Events per request (1-1000, default 100). */
  batchSize?: number;
  /** How long an event may wait for a full batch, in ms (default 1000). */
  flushInterval?: number;
  /** Events kept while costmon is slow or down; the oldest go first (default 10,000). */
  maxQueue?: number;
  /** Timeout of one usage request, in ms (default 10,000). */
  timeout?: number;
  /** Timeout of a check, in ms (default 1,000). */
  checkTimeout?: number;
  /** What `check()` answers when costmon cannot be asked (default "allow"). */
  onUnreachable?: OnUnreachable;
  /** After a check got no answer, how long later checks answer from `onUnreachable` without
   * asking, in ms (default 5,000). */
  unreachableBackoff?: number;
  /** First wait before sending a failed batch again, in ms, doubled each time (default 500). */
  retryDelay?: number;
  /** Longest wait between two tries, in ms (default 30,000). */
  maxRetryDelay?: number;
  /** How long `shutdown()`, and the flush when the process runs out of work, may take, in ms
   * (default 5,000). */
  shutdownTimeout?: number;
  /** A `fetch` to use instead of the global one. */
  fetch?: FetchLike;
  /** Where problems are said (default: warnings and errors on the console); null for silence. */
  logger?: Logger | null;
}

export interface WrapOptions {
  /** The provider name to report (default: "openai", "azure", "anthropic", "bedrock" or "vertex"). */
  provider?: string;
  endUser?: string;
  operation?: string;
  sessionId?: string;
  tags?: Record<string, string>;
}

/** One call to any provider, reported with `track()`. */
export interface TrackEvent {
  provider: string;
  model: string;
  /** All input tokens, cached reads and cache writes included. */
  inputTokens?: number;
  outputTokens?: number;
  /** The part of `inputTokens` read from the provider's prompt cache. */
  cachedInputTokens?: number;
  /** The part of `inputTokens` written to the prompt cache. */
  cacheWriteTokens?: number;
  /** The part of `outputTokens` spent reasoning. */
  reasoningTokens?: number;
  /** The part of `cacheWriteTokens` written with a one-hour lifetime (priced above 5-minute writes). */
  cacheWrite1hTokens?: number;
  /** The parts of `inputTokens` that were audio or images (priced at the model's audio or image rate). */
  inputAudioTokens?: number;
  inputImageTokens?: number;
  /** The parts of `outputTokens` that were audio or images. */
  outputAudioTokens?: number;
  outputImageTokens?: number;
  /** Web searches the call made (priced per 1,000). */
  webSearchCalls?: number;
  /** Images the call generated (priced per image). */
  outputImages?: number;
  /** "standard" (the default), "batch", "flex" or "priority" (OpenAI's "default", "auto",
   * "scale" and "fast" are read as costmon's): the tier's rates price the call. */
  serviceTier?: ServiceTier | "default" | "auto" | "scale" | "fast";
  latencyMs?: number;
  status?: "success" | "error";
  endUser?: string;
  operation?: string;
  sessionId?: string;
  tags?: Record<string, string>;
  /** Your own cost, a decimal string such as "0.0012" (never a fractional number); overrides
   * costmon's pricing. */
  costUsd?: string | number | bigint;
  /** Your application answered from its own cache and made no API call. */
  cacheHit?: boolean;
  occurredAt?: Date | string | number;
  eventId?: string;
  reservationId?: string;
  promptHash?: string;
}

export interface CheckRequest {
  provider?: string;
  model?: string;
  endUser?: string;
  operation?: string;
  tags?: Record<string, string>;
  estimatedInputTokens?: number;
  estimatedOutputTokens?: number;
  /** A decimal string such as "0.02". */
  estimatedCostUsd?: string | number | bigint;
  /** Hold the estimate against hard budgets until the call's event settles it. */
  reserve?: boolean;
  /** The event id the call will be reported with (settles the reservation). */
  eventId?: string;
  /** Throw BudgetExceededError, RateLimitedError, EmergencyStopError or
   * CostmonUnavailableError instead of returning a refusal. */
  throwOnDeny?: boolean;
  onUnreachable?: OnUnreachable;
  /** Timeout of this check, in ms (default: the client's `checkTimeout`). */
  timeout?: number;
}

function positive(name: string, value: number | undefined, fallbackValue: number): number {
  if (value === undefined) return fallbackValue;
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw new ConfigurationError(`${name} must be a number of milliseconds, not ${String(value)}`);
  }
  return value;
}

/**
 * A connection to one costmon tenant (through its API key). Create one per process and share it:
 * it owns the queue that sends usage in batches.
 */
export class Costmon implements Recorder {
  readonly url: string;
  readonly logger: Logger | null;
  readonly onUnreachable: OnUnreachable;
  readonly checkTimeout: number;
  private readonly unreachableBackoff: number;
  private readonly defaults: Attributes;
  private readonly transport: Transport;
  private readonly sender: Sender;
  private checkQuietUntil = 0;
  private checkProblem = "";

  constructor(options: CostmonOptions = {}) {
    const env = typeof process !== "undefined" ? process.env : {};
    const url = options.url ?? env.COSTMON_URL;
    const apiKey = options.apiKey ?? env.COSTMON_API_KEY;
    if (!url || !apiKey) {
      throw new ConfigurationError(
        "costmon needs its URL and an API key with the ingest scope: pass { url, apiKey }, " +
          "or set COSTMON_URL and COSTMON_API_KEY",
      );
    }
    const onUnreachable = options.onUnreachable ?? "allow";
    if (onUnreachable !== "allow" && onUnreachable !== "deny") {
      throw new ConfigurationError('onUnreachable must be "allow" or "deny"');
    }
    this.url = url;
    this.logger = options.logger === undefined ? consoleLogger : options.logger;
    this.onUnreachable = onUnreachable;
    this.checkTimeout = positive("checkTimeout", options.checkTimeout, 1000);
    this.unreachableBackoff = positive("unreachableBackoff", options.unreachableBackoff, 5000);
    this.defaults = {
      endUser: options.endUser,
      operation: options.operation,
      sessionId: options.sessionId,
      tags: options.tags ? { ...options.tags } : undefined,
    };
    this.transport = new Transport(url, apiKey, options.fetch);
    try {
      this.sender = new Sender(
        this.transport,
        {
          batchSize: options.batchSize ?? 100,
          flushInterval: positive("flushInterval", options.flushInterval, 1000),
          maxQueue: options.maxQueue ?? 10_000,
          timeout: positive("timeout", options.timeout, 10_000),
          retryDelay: positive("retryDelay", options.retryDelay, 500),
          maxRetryDelay: positive("maxRetryDelay", options.maxRetryDelay, 30_000),
          shutdownTimeout: positive("shutdownTimeout", options.shutdownTimeout, 5000),
        },
        this.logger,
      );
    } catch (error) {
      throw error instanceof RangeError ? new ConfigurationError(error.message) : error;
    }
  }

  // --- reporting -------------------------------------------------------------------------------

  /**
   * Make `client` (`new OpenAI()`, `new AzureOpenAI()`, `new Anthropic()`, ...) report the usage of
   * each call, and return it: the same object, still an instance of its class.
   *
   * Per call, `costmonEndUser`, `costmonOperation`, `costmonSessionId`, `costmonTags`,
   * `costmonReservationId` and `costmonEventId` in the request body (or the request options)
   * are taken off before the SDK sees them; see `costmonOptions()` for TypeScript.
   */
  wrap<T extends object>(client: T, options: WrapOptions = {}): T {
    const { provider, ...attributes } = options;
    return wrapClient(this, client, { provider, attributes: { ...attributes } });
  }

  /**
   * A middleware for the Vercel AI SDK that records the usage of any provider's model:
   *
   * ```ts
   * const model = wrapLanguageModel({ model: openai("gpt-4o"), middleware: costmon.aiSdkMiddleware() });
   * ```
   * Per call, `providerOptions: { costmon: { endUser, operation, sessionId, tags } }`.
   */
  aiSdkMiddleware(options: AiSdkOptions = {}): AiSdkMiddleware {
    return aiSdkMiddleware(this, options);
  }

  /** Report one call to any provider; returns its event id. Never waits for costmon. */
  track(event: TrackEvent): string {
    if (!event || typeof event.provider !== "string" || typeof event.model !== "string") {
      throw new TypeError("track() needs at least { provider, model } as strings");
    }
    if (event.costUsd !== undefined) decimalText(event.costUsd); // a fractional number is the caller's bug: say so now
    const serviceTier = checkedTier(event.serviceTier); // so is a tier costmon does not have
    const eventId = event.eventId || newEventId();
    const attributes = this.attributesFor(
      {},
      { call: { endUser: event.endUser, operation: event.operation, sessionId: event.sessionId, tags: event.tags } },
    );
    this.record({
      provider: event.provider,
      model: event.model,
      usage: event,
      attributes,
      eventId,
      occurredAt: event.occurredAt,
      latencyMs: event.latencyMs,
      error: event.status === "error",
      costUsd: event.costUsd,
      cacheHit: event.cacheHit,
      reservationId: event.reservationId,
      promptHash: event.promptHash,
      serviceTier,
    });
    return eventId;
  }

  /**
   * Merge, later winning: the call kind's operation, this client's defaults, the wrapper's, the
   * surrounding `withContext()`, the end user the SDK call names, the call's own options.
   */
  attributesFor(
    wrapper: Attributes,
    options: { call?: Attributes; defaultOperation?: string; sdkEndUser?: string | undefined } = {},
  ): Attributes {
    let attributes = merged(merged({ operation: options.defaultOperation }, this.defaults), wrapper);
    const ambient = currentContext();
    if (ambient) attributes = merged(attributes, ambient);
    if (options.sdkEndUser) attributes = merged(attributes, { endUser: options.sdkEndUser });
    return merged(attributes, options.call);
  }

  /** Queue one event; never throws. */
  record(fields: EventFields): void {
    try {
      this.sender.enqueue(buildEvent(fields, this.logger));
    } catch (error) {
      say(this.logger, "error", `could not record usage: ${String(error)}`);
    }
  }

  /** Send what is queued now; true when everything was sent (or refused) within `timeoutMs`.
   * Await it at the end of a serverless handler. */
  flush(timeoutMs = 5000): Promise<boolean> {
    return this.sender.flush(timeoutMs);
  }

  /** Flush (for at most `timeoutMs`, default `shutdownTimeout`) and stop: events reported later
   * are dropped. True when nothing was left unsent. */
  shutdown(timeoutMs?: number): Promise<boolean> {
    return this.sender.shutdown(timeoutMs ?? this.sender.shutdownTimeout);
  }

  /** Counts of events sent, refused, dropped and retried, and what is queued now. */
  stats(): SenderStats {
    return this.sender.stats();
  }

  /** Attribute every call made inside `fn` (see the module's `withContext`). */
  withContext<T>(attributes: Attributes, fn: () => T): T {
    return withContext(attributes, fn);
  }

  // --- the pre-flight check --------------------------------------------------------------------

  /**
   * Ask costmon whether a call may spend (`POST /api/v1/check/`). The reply has the API's shape.
   *
   * When costmon is down, slow (more than `timeout`, default `checkTimeout`) or answers with an
   * error, the answer is `onUnreachable`'s (allowed, by default) with `unreachable: true`; after
   * no answer, later checks answer so at once for `unreachableBackoff` ms. With `reserve`, costmon
   * holds the estimate against hard budgets until the call's event settles it (report it with
   * `costmonReservationId`, or the same `eventId`).
   */
  async check(request: CheckRequest = {}): Promise<CheckResult> {
    const attributes = this.attributesFor(
      {},
      { call: { endUser: request.endUser, operation: request.operation, tags: request.tags } },
    );
    const body: Record<string, unknown> = {};
    if (request.provider) body.provider = request.provider;
    if (request.model) body.model = request.model;
    if (attributes.endUser) body.end_user = attributes.endUser;
    if (attributes.operation) body.operation = attributes.operation;
    if (attributes.tags && Object.keys(attributes.tags).length) {
      body.tags = Object.fromEntries(Object.entries(attributes.tags).map(([k, v]) => [k, String(v)]));
    }
    if (request.estimatedInputTokens !== undefined) body.estimated_input_tokens = request.estimatedInputTokens;
    if (request.estimatedOutputTokens !== undefined) body.estimated_output_tokens = request.estimatedOutputTokens;
    if (request.estimatedCostUsd !== undefined) body.estimated_cost_usd = decimalText(request.estimatedCostUsd);
    if (request.eventId) body.event_id = request.eventId;
    body.reserve = request.reserve === true;
    let result = await this.ask(body, request.timeout ?? this.checkTimeout);
    if (result.unreachable) {
      const policy = request.onUnreachable ?? this.onUnreachable;
      result = fallback(policy === "allow", result.warnings[0]?.message ?? "costmon unreachable");
    }
    if (request.throwOnDeny) throwIfDenied(result);
    return result;
  }

  /** costmon's answer, or a placeholder with `unreachable` set and the problem. */
  private async ask(body: Record<string, unknown>, timeoutMs: number): Promise<CheckResult> {
    if (Date.now() < this.checkQuietUntil) {
      return fallback(true, `${this.checkProblem} (not asked again for ${this.unreachableBackoff} ms)`);
    }
    let response;
    try {
      response = await this.transport.postJson(CHECK_PATH, body, timeoutMs);
    } catch (error) {
      if (!(error instanceof NoAnswer)) throw error;
      const problem = `costmon unreachable: ${error.name}: ${error.message}`;
      this.checkQuietUntil = Date.now() + this.unreachableBackoff;
      this.checkProblem = problem;
      say(this.logger, "warn", `check failed (${problem}); answering from onUnreachable`);
      return fallback(true, problem);
    }
    if (response.status === 200 || response.status === 429) {
      const data = parseJson(response.body);
      if (typeof data === "object" && data !== null && "allowed" in data) {
        return fromAnswer(data as Record<string, unknown>, retryAfterSeconds(response.headers));
      }
    }
    const level = [400, 401, 403].includes(response.status) ? "error" : "warn";
    say(
      this.logger,
      level,
      `check answered ${response.status}: ${response.body.slice(0, 300)}; answering from onUnreachable`,
    );
    return fallback(true, `costmon answered ${response.status} to the check`);
  }
}

/**
 * Per-call options for a wrapped client's call, typed so TypeScript accepts them in the SDK's
 * request body:
 *
 * ```ts
 * await openai.chat.completions.create({ model, messages, ...costmonOptions({ endUser: "user-42" }) });
 * ```
 */
export function costmonOptions(options: {
  endUser?: string;
  operation?: string;
  sessionId?: string;
  tags?: Record<string, string>;
  reservationId?: string;
  eventId?: string;
}): Record<never, never> {
  const picked: Record<string, unknown> = {};
  if (options.endUser !== undefined) picked.costmonEndUser = options.endUser;
  if (options.operation !== undefined) picked.costmonOperation = options.operation;
  if (options.sessionId !== undefined) picked.costmonSessionId = options.sessionId;
  if (options.tags !== undefined) picked.costmonTags = options.tags;
  if (options.reservationId !== undefined) picked.costmonReservationId = options.reservationId;
  if (options.eventId !== undefined) picked.costmonEventId = options.eventId;
  return picked;
}
