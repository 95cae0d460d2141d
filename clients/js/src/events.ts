/**
 * Usage events as costmon's `POST /api/v1/usage/` takes them, cleaned on the caller's side.
 *
 * costmon validates a batch as a whole: one bad event refuses the batch. So every event is made
 * valid here (strings cut to the server's lengths, token counts whole and in range, tags as
 * strings), and what cannot be repaired is said in the log instead of costing the other events.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { randomUUID } from "node:crypto";

import { type Logger, say } from "./log.js";

// The server's limits (usage/ingest.py): exceeding one would refuse the whole batch.
const MAX_LEN = {
  provider: 50,
  model: 200,
  operation: 100,
  end_user: 255,
  session_id: 255,
  reservation_id: 64,
  prompt_hash: 64,
} as const;
export const MAX_TOKENS = 100_000_000;
const MAX_LATENCY_MS = 24 * 3600 * 1000;
const MAX_TAGS = 20;
const MAX_TAG_KEY = 64;
const MAX_TAG_VALUE = 200;
const MAX_EVENT_ID = 128;
const DECIMAL = /^\d+(\.\d+)?$/;

/**
 * Tokens of one call by kind, in costmon's terms: `inputTokens` counts every input token, cached
 * reads and cache writes included; `cachedInputTokens` and `cacheWriteTokens` say which part of
 * it was which. `reasoningTokens` is the part of `outputTokens` spent reasoning.
 */
export interface TokenUsage {
  inputTokens?: number;
  outputTokens?: number;
  cachedInputTokens?: number;
  cacheWriteTokens?: number;
  reasoningTokens?: number;
}

/** Who and what a call was for. */
export interface Attributes {
  endUser?: string | null;
  operation?: string | null;
  sessionId?: string | null;
  tags?: Record<string, string> | null;
}

/** An event exactly as costmon's API takes it. */
export interface WireEvent {
  event_id: string;
  occurred_at: string;
  provider: string;
  model: string;
  input_tokens: number;
  output_tokens: number;
  cached_input_tokens: number;
  cache_write_tokens: number;
  reasoning_tokens: number;
  status: "success" | "error";
  operation?: string;
  end_user?: string;
  session_id?: string;
  tags?: Record<string, string>;
  latency_ms?: number;
  cache_hit?: boolean;
  cost_usd?: string;
  reservation_id?: string;
  prompt_hash?: string;
}

/** `other`'s values win where it has one; tags are merged key by key. */
export function merged(base: Attributes, other: Attributes | null | undefined): Attributes {
  if (!other) return base;
  return {
    endUser: other.endUser ?? base.endUser,
    operation: other.operation ?? base.operation,
    sessionId: other.sessionId ?? base.sessionId,
    tags: other.tags && Object.keys(other.tags).length ? { ...base.tags, ...other.tags } : base.tags,
  };
}

// One store per process, shared by the ES module and CommonJS copies of this package, so a
// context opened through one is seen by a client made with the other.
const STORE_KEY = Symbol.for("costmon.context.v1");
const holder = globalThis as unknown as Record<symbol, AsyncLocalStorage<Attributes> | undefined>;
const storage: AsyncLocalStorage<Attributes> = (holder[STORE_KEY] ??= new AsyncLocalStorage<Attributes>());

/**
 * Attribute every call made inside `fn` (and everything it awaits) to an end user, operation,
 * session or tags, e.g. per request:
 *
 * ```ts
 * app.use((req, res, next) => withContext({ endUser: req.user.id }, next));
 * ```
 * Contexts nest; the inner one's values win.
 */
export function withContext<T>(attributes: Attributes, fn: () => T): T {
  return storage.run(merged(storage.getStore() ?? {}, attributes), fn);
}

export function currentContext(): Attributes | undefined {
  return storage.getStore();
}

export function newEventId(): string {
  return randomUUID();
}

/** A cost as costmon reads it: a decimal string, never a fractional number (floats lose cents). */
export function decimalText(value: unknown): string {
  if (typeof value === "bigint" && value >= 0n) return value.toString();
  if (typeof value === "number") {
    if (Number.isSafeInteger(value) && value >= 0) return String(value);
    throw new TypeError(
      `costUsd must be a decimal string such as "0.0012" (a fractional number loses cents); got ${value}`,
    );
  }
  if (typeof value === "string" && DECIMAL.test(value.trim())) return value.trim();
  throw new TypeError(`costUsd must be a non-negative decimal string such as "0.0012", not ${String(value)}`);
}

function cut(text: string, limit: number): string {
  if (text.length <= limit) return text;
  // By code points, as the server counts them: never half a surrogate pair.
  return Array.from(text).slice(0, limit).join("");
}

function text(name: keyof typeof MAX_LEN, value: unknown, logger: Logger | null): string {
  const raw = String(value).trim();
  const limited = cut(raw, MAX_LEN[name]);
  if (limited !== raw) say(logger, "debug", `${name} cut to ${MAX_LEN[name]} characters`);
  return limited;
}

function count(name: string, value: unknown, logger: Logger | null): number {
  if (value === undefined || value === null || typeof value === "boolean") return 0;
  const number = typeof value === "bigint" ? Number(value) : typeof value === "string" ? Number(value) : value;
  if (typeof number !== "number" || !Number.isFinite(number)) {
    say(logger, "warn", `${name}=${String(value)} is not a whole number; recorded as 0`);
    return 0;
  }
  return Math.min(Math.max(Math.trunc(number), 0), MAX_TOKENS);
}

function cleanTags(value: Record<string, unknown> | null | undefined, logger: Logger | null) {
  if (!value) return undefined;
  const tags: Record<string, string> = {};
  let size = 0;
  for (const [key, item] of Object.entries(value)) {
    const name = cut(key.trim(), MAX_TAG_KEY);
    if (!name || item === undefined || item === null) continue;
    if (size === MAX_TAGS) {
      say(logger, "warn", `more than ${MAX_TAGS} tags on one event; the rest dropped`);
      break;
    }
    if (!(name in tags)) size += 1;
    tags[name] = cut(String(item), MAX_TAG_VALUE);
  }
  return size ? tags : undefined;
}

function isoTime(value: Date | string | number | undefined, logger: Logger | null): string {
  if (value === undefined) return new Date().toISOString();
  const moment = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(moment.getTime())) {
    say(logger, "warn", `occurredAt=${String(value)} is not a time; recorded as now`);
    return new Date().toISOString();
  }
  return moment.toISOString();
}

export interface EventFields {
  provider: string;
  model: string;
  usage?: TokenUsage | null;
  attributes: Attributes;
  eventId?: string | null;
  occurredAt?: Date | string | number;
  latencyMs?: number | null;
  error?: boolean;
  costUsd?: string | number | bigint | null;
  cacheHit?: boolean;
  reservationId?: string | null;
  promptHash?: string | null;
}

/** One event, valid for costmon whatever the caller passed. */
export function buildEvent(fields: EventFields, logger: Logger | null): WireEvent {
  const usage = fields.usage ?? {};
  const tokens = {
    input_tokens: count("inputTokens", usage.inputTokens, logger),
    output_tokens: count("outputTokens", usage.outputTokens, logger),
    cached_input_tokens: count("cachedInputTokens", usage.cachedInputTokens, logger),
    cache_write_tokens: count("cacheWriteTokens", usage.cacheWriteTokens, logger),
    reasoning_tokens: count("reasoningTokens", usage.reasoningTokens, logger),
  };
  const parts = tokens.cached_input_tokens + tokens.cache_write_tokens;
  if (parts > tokens.input_tokens) {
    // costmon's input_tokens counts cached and cache-write tokens too: the caller reported the
    // uncached part only. Count the parts into the total rather than lose them.
    tokens.input_tokens = Math.min(parts, MAX_TOKENS);
    tokens.cache_write_tokens = Math.min(
      tokens.cache_write_tokens,
      tokens.input_tokens - tokens.cached_input_tokens,
    );
  }
  const event: WireEvent = {
    event_id: cut(fields.eventId || newEventId(), MAX_EVENT_ID),
    occurred_at: isoTime(fields.occurredAt, logger),
    provider: text("provider", fields.provider ?? "", logger).toLowerCase() || "unknown",
    model: text("model", fields.model ?? "", logger) || "unknown",
    ...tokens,
    status: fields.error ? "error" : "success",
  };
  const { operation, endUser, sessionId, tags } = fields.attributes;
  if (operation) event.operation = text("operation", operation, logger);
  if (endUser) event.end_user = text("end_user", endUser, logger);
  if (sessionId) event.session_id = text("session_id", sessionId, logger);
  const cleaned = cleanTags(tags, logger);
  if (cleaned) event.tags = cleaned;
  if (typeof fields.latencyMs === "number" && Number.isFinite(fields.latencyMs)) {
    event.latency_ms = Math.min(Math.max(Math.round(fields.latencyMs), 0), MAX_LATENCY_MS);
  }
  if (fields.cacheHit) event.cache_hit = true;
  if (fields.costUsd !== undefined && fields.costUsd !== null) event.cost_usd = decimalText(fields.costUsd);
  if (fields.reservationId) event.reservation_id = text("reservation_id", fields.reservationId, logger);
  if (fields.promptHash) event.prompt_hash = text("prompt_hash", fields.promptHash, logger);
  return event;
}
