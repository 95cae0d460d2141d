// The AI SDK middleware (`costmon.aiSdkMiddleware()`), around the real `ai` package and its
// OpenAI and Anthropic providers, against the fake provider and a real costmon.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText, wrapLanguageModel } from "ai";

import { withContext } from "../dist/esm/index.js";
import { ANTHROPIC_MODEL, FAILING_MODEL, FakeProvider, OPENAI_MODEL, env, events, makeCostmon, nanos, onlyEvent, started, uniqueId } from "./helpers.mjs";

const provider = await started(new FakeProvider());
const openai = createOpenAI({ baseURL: `${provider.url}/v1`, apiKey: "sk-test" });
const anthropic = createAnthropic({ baseURL: `${provider.url}/v1`, apiKey: "sk-ant-test" });

function session(options = {}) {
  const sessionId = uniqueId("ai-sdk");
  const costmon = makeCostmon({ sessionId });
  return { sessionId, costmon, middleware: costmon.aiSdkMiddleware(options) };
}

const tokens = (e) => [e.provider, e.model, e.input_tokens, e.cached_input_tokens, e.cache_write_tokens, e.output_tokens, nanos(e.cost_usd)];

describe("ai sdk", () => {
  test("generateText and streamText through OpenAI's chat API are recorded with exact costs", async () => {
    const { sessionId, costmon, middleware } = session();
    const model = wrapLanguageModel({ model: openai.chat("gpt-4o-mini"), middleware });

    const generated = await generateText({ model, prompt: "Say hello" });
    const streamed = streamText({ model, prompt: "Say hello" });
    let text = "";
    for await (const delta of streamed.textStream) text += delta;

    assert.equal(generated.text, "Hello there");
    assert.equal(text, "Hello there");
    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    assert.deepEqual(found.map(tokens), [
      ["openai", OPENAI_MODEL, 1200, 1000, 0, 300, 285_000n],
      ["openai", OPENAI_MODEL, 2000, 0, 0, 500, 600_000n],
    ]);
  });

  test("the Responses API and Anthropic's cache reads and writes are priced like the SDK wrappers'", async () => {
    const { sessionId, costmon, middleware } = session({ operation: "digest" });

    await generateText({ model: wrapLanguageModel({ model: openai("gpt-4o-mini"), middleware }), prompt: "Hi" });
    await generateText({ model: wrapLanguageModel({ model: anthropic("claude-haiku-4-5"), middleware }), prompt: "Hi" });

    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    assert.deepEqual(found.map(tokens), [
      ["openai", OPENAI_MODEL, 800, 200, 0, 100, 165_000n],
      ["anthropic", ANTHROPIC_MODEL, 2600, 2000, 500, 300, 2_425_000n],
    ]);
    assert.deepEqual(found.map((e) => e.operation), ["digest", "digest"]);
  });

  test("providerOptions.costmon and withContext attribute a call", async () => {
    const { sessionId, costmon, middleware } = session();
    const model = wrapLanguageModel({ model: openai.chat("gpt-4o-mini"), middleware });

    await generateText({
      model,
      prompt: "Hi",
      providerOptions: { costmon: { endUser: "from-options", operation: "classify", tags: { feature: "triage" } } },
    });
    await withContext({ endUser: "from-context" }, () => generateText({ model, prompt: "Hi" }));

    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    assert.deepEqual(found.map((e) => [e.end_user, e.operation, e.tags]), [
      ["from-options", "classify", { feature: "triage" }],
      ["from-context", "chat", {}],
    ]);
  });

  test("a failing call is recorded as an error and the SDK's error reaches the app", async () => {
    const { sessionId, costmon, middleware } = session();
    const model = wrapLanguageModel({ model: openai.chat(FAILING_MODEL), middleware });

    await assert.rejects(generateText({ model, prompt: "Hi", maxRetries: 0 }), /the fake provider failed/);

    assert.ok(await costmon.flush(10_000));
    const event = await onlyEvent({ session_id: sessionId });
    assert.deepEqual([event.status, event.model, event.cost_usd], ["error", FAILING_MODEL, "0"]);
  });

  test("Anthropic's one-hour cache writes, web searches and tier, and OpenAI's tier, are priced exactly", async () => {
    const { sessionId, costmon, middleware } = session();
    const claude = wrapLanguageModel({ model: anthropic("claude-haiku-4-5"), middleware });
    const gpt = wrapLanguageModel({ model: openai("gpt-4o-mini"), middleware });
    const cached = {
      messages: [
        {
          role: "system",
          content: "You answer support questions.",
          providerOptions: { anthropic: { cacheControl: { type: "ephemeral", ttl: "1h" } } },
        },
        { role: "user", content: "Hi" },
      ],
      tools: { web_search: anthropic.tools.webSearch_20250305({ maxUses: 5 }) },
    };
    const priority = { prompt: "Hi", providerOptions: { openai: { serviceTier: "priority" } } };

    await generateText({ model: claude, ...cached });
    for await (const _ of streamText({ model: claude, ...cached }).textStream);
    await generateText({ model: gpt, ...priority });
    for await (const _ of streamText({ model: gpt, ...priority }).textStream);

    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    // Claude: 100 x 1 + 2,000 x 0.10 + 200 x 1.25 + 300 x 2 (one-hour writes) + 300 x 5 = 2,650
    // USD per Mtok, plus 3 searches at $10 per 1,000. GPT on the priority tier:
    // 600 x 0.25 + 200 x 0.125 + 100 x 1 = 275.
    assert.deepEqual(
      found.map((e) => [e.provider, e.service_tier, e.cache_write_1h_tokens, e.web_search_calls, nanos(e.cost_usd)]),
      [
        ["anthropic", "standard", 300, 3, 32_650_000n],
        ["anthropic", "standard", 300, 3, 32_650_000n],
        ["openai", "priority", 0, 0, 275_000n],
        ["openai", "priority", 0, 0, 275_000n],
      ],
    );
    assert.deepEqual(await events({ session_id: sessionId }, env.outsiderKey), []);
  });
});
