/**
 * The `openai` SDK: chat completions (plain, streamed, and the SDK's parse/stream/runTools
 * helpers, which call `create`), legacy completions, embeddings and the Responses API.
 *
 * Usage fields: `prompt_tokens` counts all input, cached included, as costmon does;
 * `prompt_tokens_details.cached_tokens` is the cached part, its `audio_tokens` and `image_tokens`
 * the audio and image parts, and `completion_tokens_details.reasoning_tokens` and `audio_tokens`
 * the reasoning and audio parts of the output (the Responses API's `input_tokens_details` and
 * `output_tokens_details` likewise). The response's `service_tier` says the rates it was served
 * at: `default` (also `auto`, `scale`) is costmon's standard, `flex` and `priority` (OpenAI's fast
 * mode) are priced at their own. A Responses call's billable web searches are its
 * `tool_usage.web_search.num_requests`.
 *
 * A streamed chat gets `stream_options: { include_usage: true }`, so the last chunk carries the
 * usage; when the application had not asked for that chunk, it is read here and not passed on.
 */
import { type TokenUsage, tierOf } from "../events.js";
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

/** Both usage shapes: `names` are the input and output counts and their details' fields. */
function tokenUsage(usage: unknown, names: [string, string, string, string]): TokenUsage | null {
  if (!isObject(usage)) return null;
  const [totalIn, totalOut, detailsIn, detailsOut] = names;
  const inp = get(usage, detailsIn);
  const out = get(usage, detailsOut);
  return {
    inputTokens: count(usage[totalIn]),
    outputTokens: count(usage[totalOut]),
    cachedInputTokens: count(get(inp, "cached_tokens")),
    cacheWriteTokens: count(get(inp, "cache_write_tokens")),
    reasoningTokens: count(get(out, "reasoning_tokens")),
    inputAudioTokens: count(get(inp, "audio_tokens")),
    inputImageTokens: count(get(inp, "image_tokens")),
    outputAudioTokens: count(get(out, "audio_tokens")),
    outputImageTokens: count(get(out, "image_tokens")),
  };
}

/** Chat and legacy completions: `CompletionUsage`. */
export function completionUsage(usage: unknown): TokenUsage | null {
  return tokenUsage(usage, ["prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details"]);
}

/** The Responses API: `ResponseUsage`. */
export function responsesUsage(usage: unknown): TokenUsage | null {
  return tokenUsage(usage, ["input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details"]);
}

/**
 * A Responses call's billable web searches: `tool_usage.web_search.num_requests`; from a
 * response without `tool_usage`, its `web_search_call` items that searched (opening or reading a
 * page is not a billed search).
 */
export function webSearches(response: unknown): number {
  const toolUsage = get(response, "tool_usage");
  if (isObject(toolUsage)) return count(get(toolUsage.web_search, "num_requests"));
  const output = get(response, "output");
  if (!Array.isArray(output)) return 0;
  return output.filter((item) => {
    const action = get(get(item, "action"), "type");
    return get(item, "type") === "web_search_call" && (action === undefined || action === null || action === "search");
  }).length;
}

function readCompletion(response: unknown): Reading {
  return {
    model: modelOf(response),
    usage: completionUsage(get(response, "usage")),
    serviceTier: tierOf(get(response, "service_tier")),
  };
}

function readEmbeddings(response: unknown): Reading {
  const usage = get(response, "usage");
  return {
    model: modelOf(response),
    usage: isObject(usage) ? { inputTokens: count(usage.prompt_tokens) } : null,
  };
}

function readResponse(response: unknown): Reading {
  let usage = responsesUsage(get(response, "usage"));
  const searches = webSearches(response);
  if (searches) usage = { ...usage, webSearchCalls: searches };
  return { model: modelOf(response), usage, serviceTier: tierOf(get(response, "service_tier")) };
}

/** Chunks of a streamed (chat) completion: the model on each, the usage on the last. */
class CompletionObserver implements StreamObserver {
  private readonly current: Reading = {};

  constructor(private readonly hideUsageChunk: boolean) {}

  observe(chunk: unknown): boolean {
    const model = modelOf(chunk);
    if (model) this.current.model = model;
    const tier = tierOf(get(chunk, "service_tier"));
    if (tier) this.current.serviceTier = tier;
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
      const read = readResponse(response);
      if (read.model) this.current.model = read.model;
      if (read.serviceTier) this.current.serviceTier = read.serviceTier;
      if (read.usage) this.current.usage = read.usage;
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
