/**
 * A middleware for the Vercel AI SDK (`ai`): `wrapLanguageModel({ model, middleware })` records
 * the usage of any provider's language model, from what the SDK reports after each generate call
 * or at the `finish` part of a stream.
 *
 * Usage comes in the SDK's own terms: `inputTokens.total` counts all input (cache reads and
 * writes included), `cacheRead` and `cacheWrite` say which part, `outputTokens.reasoning` is the
 * reasoning part of the output. (The flat numbers of AI SDK 5 are read too.) What the SDK's
 * counts leave out is read from the provider's own usage it passes on (`usage.raw`): Anthropic's
 * one-hour cache writes, web searches and service tier, OpenAI's audio and image tokens; and
 * the tier OpenAI's Responses API reports (`providerMetadata.openai.serviceTier`). Per call,
 * `providerOptions: { costmon: { endUser, operation, sessionId, tags } }` attributes it.
 */
import { type ServiceTier, type TokenUsage, tierOf } from "../events.js";
import { messageUsage } from "./anthropic.js";
import { Call, type Json, type Reading, type Recorder, count, get, isObject } from "./base.js";
import { completionUsage, responsesUsage } from "./openai.js";

/** What `wrapLanguageModel` accepts as a middleware (typed loosely: `ai` is not a dependency). */
export interface AiSdkMiddleware {
  readonly specificationVersion: "v3";
  wrapGenerate(options: { doGenerate: () => PromiseLike<any>; params: any; model: any }): Promise<any>;
  wrapStream(options: { doStream: () => PromiseLike<any>; params: any; model: any }): Promise<any>;
}

export interface AiSdkOptions {
  /** The provider to report (default: from the model, e.g. "openai.chat" reports "openai"). */
  provider?: string;
  endUser?: string;
  operation?: string;
  sessionId?: string;
  tags?: Record<string, string>;
}

// AI SDK provider ids that costmon knows by another name.
const PROVIDER_NAMES: Record<string, string> = {
  "google.generative-ai": "google",
  "google.vertex": "vertex",
  "amazon-bedrock": "bedrock",
  "azure-openai": "azure",
};

export function providerName(id: unknown): string {
  if (typeof id !== "string" || !id) return "unknown";
  for (const [prefix, name] of Object.entries(PROVIDER_NAMES)) {
    if (id === prefix || id.startsWith(`${prefix}.`)) return name;
  }
  return id.split(".")[0]!;
}

function number(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) ? value : undefined;
}

/** The SDK's usage (V3's nested counts, or V2's flat numbers) in costmon's terms. */
export function aiUsage(usage: unknown): TokenUsage | null {
  if (!isObject(usage)) return null;
  const input = usage.inputTokens;
  const output = usage.outputTokens;
  if (isObject(input) || isObject(output)) {
    const cacheRead = count(get(input, "cacheRead"));
    const cacheWrite = count(get(input, "cacheWrite"));
    const total =
      number(get(input, "total")) ?? count(get(input, "noCache")) + cacheRead + cacheWrite;
    return {
      inputTokens: count(total),
      outputTokens: count(get(output, "total")),
      cachedInputTokens: cacheRead,
      cacheWriteTokens: cacheWrite,
      reasoningTokens: count(get(output, "reasoning")),
      ...rawParts(usage.raw),
    };
  }
  return {
    inputTokens: count(input),
    outputTokens: count(output),
    cachedInputTokens: count(usage.cachedInputTokens),
    reasoningTokens: count(usage.reasoningTokens),
  };
}

/** The parts the provider's own usage tells and the SDK's counts do not. */
function rawParts(raw: unknown): TokenUsage {
  if (!isObject(raw)) return {};
  let usage: TokenUsage | null = null;
  if ("prompt_tokens" in raw) usage = completionUsage(raw); // OpenAI's chat
  else if ("input_tokens_details" in raw) usage = responsesUsage(raw); // OpenAI's Responses
  else if ("input_tokens" in raw) usage = messageUsage(raw); // Anthropic's
  if (!usage) return {};
  const { cacheWrite1hTokens, inputAudioTokens, inputImageTokens, outputAudioTokens, outputImageTokens, webSearchCalls } =
    usage;
  return { cacheWrite1hTokens, inputAudioTokens, inputImageTokens, outputAudioTokens, outputImageTokens, webSearchCalls };
}

/** The tier that served a call: Anthropic's usage says it, OpenAI's provider metadata does. */
export function aiTier(usage: unknown, providerMetadata: unknown): ServiceTier | undefined {
  const fromUsage = tierOf(get(get(usage, "raw"), "service_tier"));
  if (fromUsage) return fromUsage;
  if (!isObject(providerMetadata)) return undefined;
  for (const metadata of Object.values(providerMetadata)) {
    const tier = tierOf(get(metadata, "serviceTier"));
    if (tier) return tier;
  }
  return undefined;
}

function callOptions(params: unknown): Json {
  const options = get(get(params, "providerOptions"), "costmon");
  return isObject(options) ? options : {};
}

function text(value: unknown): string | undefined {
  return typeof value === "string" && value ? value : undefined;
}

function open(costmon: Recorder, options: AiSdkOptions, params: unknown, model: unknown): Call {
  const { provider, ...wrapper } = options;
  const own = callOptions(params);
  const openaiUser = get(get(get(params, "providerOptions"), "openai"), "user");
  const attributes = costmon.attributesFor(wrapper, {
    defaultOperation: "chat",
    sdkEndUser: text(openaiUser),
    call: {
      endUser: text(own.endUser),
      operation: text(own.operation),
      sessionId: text(own.sessionId),
      tags: isObject(own.tags) ? (own.tags as Record<string, string>) : undefined,
    },
  });
  return new Call(
    costmon,
    provider ?? providerName(get(model, "provider")),
    text(get(model, "modelId")),
    attributes,
    text(own.reservationId),
    text(own.eventId),
  );
}

export function aiSdkMiddleware(costmon: Recorder, options: AiSdkOptions = {}): AiSdkMiddleware {
  return {
    specificationVersion: "v3",

    async wrapGenerate({ doGenerate, params, model }) {
      const call = open(costmon, options, params, model);
      let result: unknown;
      try {
        result = await doGenerate();
      } catch (error) {
        call.finish(null, true);
        throw error;
      }
      const usage = get(result, "usage");
      call.finish(
        {
          model: text(get(get(result, "response"), "modelId")),
          usage: aiUsage(usage),
          serviceTier: aiTier(usage, get(result, "providerMetadata")),
        },
        false,
      );
      return result;
    },

    async wrapStream({ doStream, params, model }) {
      const call = open(costmon, options, params, model);
      let result: Json;
      try {
        result = (await doStream()) as Json;
      } catch (error) {
        call.finish(null, true);
        throw error;
      }
      const stream = result.stream as ReadableStream<unknown> | undefined;
      if (!stream || typeof stream.pipeThrough !== "function") {
        call.finish(null, false);
        return result;
      }
      const reading: Reading = {};
      let failed = false;
      const observe = new TransformStream<unknown, unknown>({
        transform(part, controller) {
          const kind = get(part, "type");
          if (kind === "response-metadata") reading.model = text(get(part, "modelId")) ?? reading.model;
          else if (kind === "finish") {
            reading.usage = aiUsage(get(part, "usage"));
            reading.serviceTier = aiTier(get(part, "usage"), get(part, "providerMetadata"));
          }
          else if (kind === "error") failed = true;
          controller.enqueue(part);
        },
        flush() {
          call.finish(reading, failed);
        },
      });
      return { ...result, stream: stream.pipeThrough(observe) };
    },
  };
}
