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

/** costmon's service tiers: the rates a call was served at. */
export type ServiceTier = "standard" | "batch" | "flex" | "priority";
export const SERVICE_TIERS: readonly ServiceTier[] = ["standard", "batch", "flex", "priority"];
// The providers' names for costmon's tiers. OpenAI serves "default" (and "auto", "scale") at the
// standard rates and reports its fast mode as "priority".
const TIER_NAMES = new Map<string, ServiceTier>([
  ...SERVICE_TIERS.map((tier) => [tier, tier] as const),
  ["default", "standard"],
  ["auto", "standard"],
  ["scale", "standard"],
  ["fast", "priority"],
]);

/**
 * Tokens of one call by kind, in costmon's terms: `inputTokens` counts every input token, cached
 * reads and cache writes included; `cachedInputTokens` and `cacheWriteTokens` say which part of
 * it was which, `cacheWrite1hTokens` the part of the writes kept for an hour, `inputAudioTokens`
 * and `inputImageTokens` the audio and image parts. `reasoningTokens`, `outputAudioTokens` and
 * `outputImageTokens` are parts of `outputTokens`. `webSearchCalls` and `outputImages` count the
 * searches the call made and the images it generated.
 */
export interface TokenUsage {
  inputTokens?: number;
  outputTokens?: number;
  cachedInputTokens?: number;
  cacheWriteTokens?: number;
  reasoningTokens?: number;
  cacheWrite1hTokens?: number;
  inputAudioTokens?: number;
  inputImageTokens?: number;
  outputAudioTokens?: number;
  outputImageTokens?: number;
  webSearchCalls?: number;
  outputImages?: number;
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
  // Sent only when not 0 (or not standard), so an event without them stays as an older costmon
  // takes it.
  cache_write_1h_tokens?: number;
  input_audio_tokens?: number;
  input_image_tokens?: number;
  output_audio_tokens?: number;
  output_image_tokens?: number;
  web_search_calls?: number;
  output_images?: number;
  service_tier?: ServiceTier;
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

/** costmon's tier for a tier name of costmon's or a provider's ("flex", OpenAI's "default");
 * undefined for anything else. */
export function tierOf(value: unknown): ServiceTier | undefined {
  return typeof value === "string" ? TIER_NAMES.get(value.trim().toLowerCase()) : undefined;
}

/** A tier given by the application: undefined stays undefined, an unknown name is its bug. */
export function checkedTier(value: unknown): ServiceTier | undefined {
  if (value === undefined || value === null) return undefined;
  const tier = tierOf(value);
  if (tier === undefined) {
    throw new TypeError(
      `serviceTier must be one of ${SERVICE_TIERS.join(", ")} (or OpenAI's default, auto, scale, fast), not ${String(value)}`,
    );
  }
  return tier;
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
  /** costmon's tier or a provider's name for it; anything else is recorded as standard. */
  serviceTier?: string | null;
}

type Counts = Record<
  | "input_tokens"
  | "output_tokens"
  | "cached_input_tokens"
  | "cache_write_tokens"
  | "reasoning_tokens"
  | (typeof PART_FIELDS)[number][0],
  number
>;

// Counts priced apart where the provider does: the wire name and the TokenUsage name.
const PART_FIELDS = [
  ["cache_write_1h_tokens", "cacheWrite1hTokens"],
  ["input_audio_tokens", "inputAudioTokens"],
  ["input_image_tokens", "inputImageTokens"],
  ["output_audio_tokens", "outputAudioTokens"],
  ["output_image_tokens", "outputImageTokens"],
  ["web_search_calls", "webSearchCalls"],
  ["output_images", "outputImages"],
] as const;

/** One event, valid for costmon whatever the caller passed. */
export function buildEvent(fields: EventFields, logger: Logger | null): WireEvent {
  const usage = fields.usage ?? {};
  const tokens = {
    input_tokens: count("inputTokens", usage.inputTokens, logger),
    output_tokens: count("outputTokens", usage.outputTokens, logger),
    cached_input_tokens: count("cachedInputTokens", usage.cachedInputTokens, logger),
    cache_write_tokens: count("cacheWriteTokens", usage.cacheWriteTokens, logger),
    reasoning_tokens: count("reasoningTokens", usage.reasoningTokens, logger),
  } as Counts;
  for (const [wire, name] of PART_FIELDS) tokens[wire] = count(name, usage[name], logger);
  fitParts(tokens, logger);
  const { input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens } = tokens;
  const event: WireEvent = {
    event_id: cut(fields.eventId || newEventId(), MAX_EVENT_ID),
    occurred_at: isoTime(fields.occurredAt, logger),
    provider: text("provider", fields.provider ?? "", logger).toLowerCase() || "unknown",
    model: text("model", fields.model ?? "", logger) || "unknown",
    input_tokens,
    output_tokens,
    cached_input_tokens,
    cache_write_tokens,
    reasoning_tokens,
    status: fields.error ? "error" : "success",
  };
  for (const [wire] of PART_FIELDS) {
    if (tokens[wire]) event[wire] = tokens[wire];
  }
  const tier = tierOf(fields.serviceTier);
  if (tier === undefined && fields.serviceTier !== undefined && fields.serviceTier !== null) {
    say(logger, "warn", `serviceTier=${String(fields.serviceTier)} is not a tier; recorded as standard`);
  }
  if (tier !== undefined && tier !== "standard") event.service_tier = tier;
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

/** Make every part fit in its total, as costmon requires (it refuses the batch otherwise). */
function fitParts(tokens: Counts, logger: Logger | null): void {
  if (tokens.cache_write_1h_tokens > tokens.cache_write_tokens) {
    // A part is never more than its total: the caller counted the one-hour writes apart.
    tokens.cache_write_tokens = tokens.cache_write_1h_tokens;
  }
  const cache = tokens.cached_input_tokens + tokens.cache_write_tokens;
  if (cache > tokens.input_tokens) {
    // costmon's input_tokens counts cached and cache-write tokens too: the caller reported the
    // uncached part only. Count the parts into the total rather than lose them.
    tokens.input_tokens = Math.min(cache, MAX_TOKENS);
    tokens.cache_write_tokens = Math.min(tokens.cache_write_tokens, tokens.input_tokens - tokens.cached_input_tokens);
    tokens.cache_write_1h_tokens = Math.min(tokens.cache_write_1h_tokens, tokens.cache_write_tokens);
  }
  // Audio and image tokens the provider also counted as cached (OpenAI's cached_tokens can
  // include cached audio) would exceed the input: the part left uncached is the most they are.
  const room = tokens.input_tokens - tokens.cached_input_tokens - tokens.cache_write_tokens;
  trim(tokens, room, ["input_audio_tokens", "input_image_tokens"], logger);
  trim(tokens, tokens.output_tokens, ["output_audio_tokens", "output_image_tokens"], logger);
}

function trim(tokens: Counts, room: number, names: (keyof Counts)[], logger: Logger | null): void {
  for (const name of names) {
    if (tokens[name] > room) {
      say(logger, "debug", `${name} cut to ${Math.max(room, 0)} to fit in the total`);
      tokens[name] = Math.max(room, 0);
    }
    room -= tokens[name];
  }
}
