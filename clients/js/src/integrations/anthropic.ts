/**
 * The `@anthropic-ai/sdk` SDK: `messages.create` (with or without `stream: true`), and through it
 * `messages.parse` and `messages.stream`, also under `beta.`.
 *
 * Anthropic's `input_tokens` counts only the input that was neither read from nor written to the
 * prompt cache; costmon's `input_tokens` counts all of it. So costmon's input is
 * `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`, of which the cache
 * reads are `cachedInputTokens` and the cache writes `cacheWriteTokens`, of which
 * `cache_creation.ephemeral_1h_input_tokens` were written for an hour (`cacheWrite1hTokens`,
 * priced above five-minute writes). `server_tool_use.web_search_requests` is `webSearchCalls`;
 * `usage.service_tier` (`standard`, `priority`, `batch`) is the event's tier.
 *
 * A stream tells the usage in two events: `message_start` (input and cache counts, the first
 * output tokens) and `message_delta` (cumulative counts: the output, the server tools' requests,
 * and input fields when given).
 */
import { type TokenUsage, tierOf } from "../events.js";
import { type Json, type Reading, type Route, type StreamObserver, count, get, isObject, modelOf } from "./base.js";
import { constructorNames } from "./openai.js";

const USAGE_FIELDS = [
  "input_tokens",
  "cache_read_input_tokens",
  "cache_creation_input_tokens",
  "output_tokens",
  "output_tokens_details",
  "cache_creation",
  "server_tool_use",
  "service_tier",
];

export function providerFor(client: object): string {
  const names = constructorNames(client).join(" ");
  if (names.includes("Bedrock")) return "bedrock";
  if (names.includes("Vertex")) return "vertex";
  return "anthropic";
}

export function messageUsage(usage: unknown): TokenUsage | null {
  if (!isObject(usage)) return null;
  const uncached = count(usage.input_tokens);
  const read = count(usage.cache_read_input_tokens);
  const oneHour = count(get(usage.cache_creation, "ephemeral_1h_input_tokens"));
  const fiveMinutes = count(get(usage.cache_creation, "ephemeral_5m_input_tokens"));
  // The two lifetimes add up to the writes; should a reply disagree, the larger count stands.
  const written = Math.max(count(usage.cache_creation_input_tokens), oneHour + fiveMinutes);
  return {
    inputTokens: uncached + read + written,
    outputTokens: count(usage.output_tokens),
    cachedInputTokens: read,
    cacheWriteTokens: written,
    reasoningTokens: count(get(usage.output_tokens_details, "thinking_tokens")),
    cacheWrite1hTokens: oneHour,
    webSearchCalls: count(get(usage.server_tool_use, "web_search_requests")),
  };
}

function readMessage(message: unknown): Reading {
  const usage = get(message, "usage");
  return { model: modelOf(message), usage: messageUsage(usage), serviceTier: tierOf(get(usage, "service_tier")) };
}

/** Raw stream events of `messages.create({ stream: true })`. */
class MessageObserver implements StreamObserver {
  private model: string | undefined;
  private usage: Json | undefined;

  observe(event: unknown): boolean {
    const kind = get(event, "type");
    if (kind === "message_start") {
      const message = get(event, "message");
      this.model = modelOf(message) ?? this.model;
      this.merge(get(message, "usage"));
    } else if (kind === "message_delta") {
      this.merge(get(event, "usage"));
    }
    return false;
  }

  private merge(usage: unknown): void {
    if (!isObject(usage)) return;
    this.usage ??= {};
    for (const name of USAGE_FIELDS) {
      const value = usage[name];
      if (value !== undefined && value !== null) this.usage[name] = value; // message_delta's counts are cumulative
    }
  }

  reading(): Reading {
    if (!this.usage) return { model: this.model, usage: null };
    return { model: this.model, usage: messageUsage(this.usage), serviceTier: tierOf(this.usage.service_tier) };
  }
}

function endUser(body: Json): string | undefined {
  const value = get(body.metadata, "user_id");
  return typeof value === "string" && value ? value : undefined;
}

const CREATE: Route = {
  operation: "chat",
  readResponse: readMessage,
  observer: () => new MessageObserver(),
  endUser,
};

export const ROUTES: [string[], Route][] = [
  [["messages", "create"], CREATE],
  [["beta", "messages", "create"], CREATE],
];
