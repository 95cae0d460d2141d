/**
 * The `@anthropic-ai/sdk` SDK: `messages.create` (with or without `stream: true`), and through it
 * `messages.parse` and `messages.stream`, also under `beta.`.
 *
 * Anthropic's `input_tokens` counts only the input that was neither read from nor written to the
 * prompt cache; costmon's `input_tokens` counts all of it. So costmon's input is
 * `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`, of which the cache
 * reads are `cachedInputTokens` and the cache writes `cacheWriteTokens`.
 *
 * A stream tells the usage in two events: `message_start` (input and cache counts, the first
 * output tokens) and `message_delta` (cumulative counts: the output, and input fields when given).
 */
import type { TokenUsage } from "../events.js";
import { type Json, type Reading, type Route, type StreamObserver, count, get, isObject, modelOf } from "./base.js";
import { constructorNames } from "./openai.js";

const USAGE_FIELDS = ["input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens"];

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
  const written = count(usage.cache_creation_input_tokens);
  return {
    inputTokens: uncached + read + written,
    outputTokens: count(usage.output_tokens),
    cachedInputTokens: read,
    cacheWriteTokens: written,
    reasoningTokens: count(get(usage.output_tokens_details, "thinking_tokens")),
  };
}

function readMessage(message: unknown): Reading {
  return { model: modelOf(message), usage: messageUsage(get(message, "usage")) };
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
    if (isObject(usage.output_tokens_details)) this.usage.output_tokens_details = usage.output_tokens_details;
  }

  reading(): Reading {
    return { model: this.model, usage: this.usage ? messageUsage(this.usage) : null };
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
