/**
 * The `openai` SDK: chat completions (plain, streamed, and the SDK's parse/stream/runTools
 * helpers, which call `create`), legacy completions, embeddings and the Responses API.
 *
 * Usage fields: `prompt_tokens` counts all input, cached included, as costmon does;
 * `prompt_tokens_details.cached_tokens` is the cached part and
 * `completion_tokens_details.reasoning_tokens` the reasoning part of the output. A streamed chat
 * gets `stream_options: { include_usage: true }`, so the last chunk carries the usage; when the
 * application had not asked for that chunk, it is read here and not passed on.
 */
import type { TokenUsage } from "../events.js";
import { type Json, type Reading, type Route, type StreamObserver, count, get, isObject, modelOf } from "./base.js";

export function providerFor(client: object): string {
  return constructorNames(client).some((name) => name.includes("Azure")) ? "azure" : "openai";
}

export function constructorNames(client: object): string[] {
  const names: string[] = [];
  for (let proto = Object.getPrototypeOf(client); proto && proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
    const name = (proto.constructor as { name?: unknown } | undefined)?.name;
    if (typeof name === "string") names.push(name);
  }
  return names;
}

/** Chat and legacy completions: `CompletionUsage`. */
export function completionUsage(usage: unknown): TokenUsage | null {
  if (!isObject(usage)) return null;
  const prompt = get(usage, "prompt_tokens_details");
  const completion = get(usage, "completion_tokens_details");
  return {
    inputTokens: count(usage.prompt_tokens),
    outputTokens: count(usage.completion_tokens),
    cachedInputTokens: count(get(prompt, "cached_tokens")),
    cacheWriteTokens: count(get(prompt, "cache_write_tokens")),
    reasoningTokens: count(get(completion, "reasoning_tokens")),
  };
}

/** The Responses API: `ResponseUsage`. */
export function responsesUsage(usage: unknown): TokenUsage | null {
  if (!isObject(usage)) return null;
  const detailsIn = get(usage, "input_tokens_details");
  const detailsOut = get(usage, "output_tokens_details");
  return {
    inputTokens: count(usage.input_tokens),
    outputTokens: count(usage.output_tokens),
    cachedInputTokens: count(get(detailsIn, "cached_tokens")),
    cacheWriteTokens: count(get(detailsIn, "cache_write_tokens")),
    reasoningTokens: count(get(detailsOut, "reasoning_tokens")),
  };
}

function readCompletion(response: unknown): Reading {
  return { model: modelOf(response), usage: completionUsage(get(response, "usage")) };
}

function readEmbeddings(response: unknown): Reading {
  const usage = get(response, "usage");
  return {
    model: modelOf(response),
    usage: isObject(usage) ? { inputTokens: count(usage.prompt_tokens) } : null,
  };
}

function readResponse(response: unknown): Reading {
  return { model: modelOf(response), usage: responsesUsage(get(response, "usage")) };
}

/** Chunks of a streamed (chat) completion: the model on each, the usage on the last. */
class CompletionObserver implements StreamObserver {
  private readonly current: Reading = {};

  constructor(private readonly hideUsageChunk: boolean) {}

  observe(chunk: unknown): boolean {
    const model = modelOf(chunk);
    if (model) this.current.model = model;
    const usage = get(chunk, "usage");
    if (!isObject(usage)) return false;
    this.current.usage = completionUsage(usage);
    // The usage-only chunk has no choices; an app that did not ask for it may not expect it.
    const choices = get(chunk, "choices");
    return this.hideUsageChunk && !(Array.isArray(choices) && choices.length > 0);
  }

  reading(): Reading {
    return this.current;
  }
}

/** Events of a streamed Responses call: `response.completed` (or failed, incomplete) holds the
 * whole response with its usage. */
class ResponsesObserver implements StreamObserver {
  private readonly current: Reading = {};

  observe(event: unknown): boolean {
    const response = get(event, "response");
    if (isObject(response)) {
      const model = modelOf(response);
      if (model) this.current.model = model;
      if (isObject(response.usage)) this.current.usage = responsesUsage(response.usage);
    }
    return false;
  }

  reading(): Reading {
    return this.current;
  }
}

/** Ask for the usage chunk; true when the application had not asked for it itself. */
function includeUsage(body: Json): boolean {
  const options = isObject(body.stream_options) ? { ...body.stream_options } : {};
  const asked = options.include_usage === true;
  options.include_usage = true;
  body.stream_options = options;
  return !asked;
}

function endUser(body: Json): string | undefined {
  for (const name of ["user", "safety_identifier"]) {
    const value = body[name];
    if (typeof value === "string" && value) return value;
  }
  return undefined;
}

const CHAT: Route = {
  operation: "chat",
  readResponse: readCompletion,
  observer: (hide) => new CompletionObserver(hide),
  prepareStream: includeUsage,
  endUser,
};

export const ROUTES: [string[], Route][] = [
  [["chat", "completions", "create"], CHAT],
  [["completions", "create"], { ...CHAT, operation: "text_completion" }],
  [["embeddings", "create"], { operation: "embeddings", readResponse: readEmbeddings, endUser }],
  [
    ["responses", "create"],
    { operation: "chat", readResponse, observer: () => new ResponsesObserver(), endUser },
  ],
];
