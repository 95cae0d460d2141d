// Compiled (never run) by `npm run typecheck`: what a TypeScript application writes must type-check.
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";

import {
  BudgetExceededError,
  type CheckResult,
  Costmon,
  RateLimitedError,
  type SenderStats,
  costmonOptions,
  withContext,
} from "../src/index.js";

const costmon = new Costmon({ url: "http://127.0.0.1:8000", apiKey: "cm_test", onUnreachable: "deny" });

// wrap() gives back the SDK's own type: every method keeps its signature.
const openai: OpenAI = costmon.wrap(new OpenAI({ apiKey: "sk-test" }), { endUser: "u", tags: { team: "x" } });
const anthropic: Anthropic = costmon.wrap(new Anthropic({ apiKey: "sk-ant-test" }));

export async function calls(): Promise<string> {
  const completion = await openai.chat.completions.create({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: "Hi" }],
    ...costmonOptions({ endUser: "user-42", tags: { feature: "search" } }),
  });
  const message = await anthropic.messages.create({
    model: "claude-haiku-4-5",
    max_tokens: 100,
    messages: [{ role: "user", content: "Hi" }],
    ...costmonOptions({ operation: "support" }),
  });
  const first = message.content[0];
  return (completion.choices[0]?.message.content ?? "") + (first?.type === "text" ? first.text : "");
}

export async function check(): Promise<void> {
  const result: CheckResult = await costmon.check({ model: "gpt-4o", estimatedCostUsd: "0.02", reserve: true });
  const remaining: string | undefined = result.budgets[0]?.remaining_usd;
  const reservation: string | null = result.reservation_id;
  void [remaining, reservation, result.unreachable, result.retry_after];
  try {
    await costmon.check({ endUser: "u", throwOnDeny: true });
  } catch (error) {
    if (error instanceof RateLimitedError) void (error.retryAfter satisfies number | null);
    if (error instanceof BudgetExceededError) void (error.result.suggested_model satisfies string | null);
  }
}

export async function serverless(): Promise<boolean> {
  const id: string = costmon.track({ provider: "mistral", model: "mistral-large", inputTokens: 10, costUsd: "0.001" });
  costmon.track({
    provider: "anthropic",
    model: "claude-haiku-4-5",
    inputTokens: 900,
    cacheWriteTokens: 500,
    cacheWrite1hTokens: 300,
    webSearchCalls: 2,
    serviceTier: "priority",
  });
  costmon.track({ provider: "openai", model: "gpt-4o-audio-preview", inputAudioTokens: 10, outputImages: 1, serviceTier: "default" });
  // @ts-expect-error a tier costmon does not have
  costmon.track({ provider: "openai", model: "gpt-4o", serviceTier: "turbo" });
  await withContext({ endUser: id }, () => calls());
  const stats: SenderStats = costmon.stats();
  void stats.dropped;
  return (await costmon.flush()) && (await costmon.shutdown(1000));
}

// The AI SDK middleware fits wrapLanguageModel.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, wrapLanguageModel } from "ai";

export async function aiSdk(): Promise<string> {
  const model = wrapLanguageModel({
    model: createOpenAI({ apiKey: "sk-test" }).chat("gpt-4o-mini"),
    middleware: costmon.aiSdkMiddleware({ operation: "summarize" }),
  });
  const { text } = await generateText({ model, prompt: "Hi", providerOptions: { costmon: { endUser: "user-42" } } });
  return text;
}

export async function untyped(): Promise<void> {
  // Without costmonOptions(), TypeScript refuses the names the SDK's parameter types do not know.
  // @ts-expect-error costmonEndUser is not an OpenAI parameter
  await openai.chat.completions.create({ model: "gpt-4o", messages: [], costmonEndUser: "u" });
}
