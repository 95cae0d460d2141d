// track() with the fields that change a price: the service tier, one-hour cache writes, audio and
// image tokens, web searches and generated images, priced exactly by a real costmon
// (tests/client/prices.py has the rates).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { Gate, env, events, makeCostmon, nanos, started, uniqueId } from "./helpers.mjs";

const gate = await started(new Gate());

const PRICING_FIELDS = [
  "service_tier",
  "cache_write_1h_tokens",
  "input_audio_tokens",
  "input_image_tokens",
  "output_audio_tokens",
  "output_image_tokens",
  "web_search_calls",
  "output_images",
];
const NONE = Object.fromEntries(PRICING_FIELDS.slice(1).map((name) => [name, 0]));

function pricing(e) {
  return { ...Object.fromEntries(PRICING_FIELDS.map((name) => [name, e[name]])), cost_usd: e.cost_usd, nanos: nanos(e.cost_usd) };
}

function session(options = {}) {
  const sessionId = uniqueId("track");
  return { sessionId, costmon: makeCostmon({ sessionId, ...options }) };
}

describe("track", () => {
  test("tiers, cache lifetimes, modalities, searches and images are reported and priced exactly", async () => {
    const { sessionId, costmon } = session();

    const ids = {
      priority: costmon.track({
        provider: "anthropic",
        model: "claude-haiku-4-5",
        inputTokens: 3000,
        cachedInputTokens: 2000,
        cacheWriteTokens: 400,
        cacheWrite1hTokens: 100,
        outputTokens: 200,
        webSearchCalls: 4,
        serviceTier: "priority",
      }),
      images: costmon.track({
        provider: "openai",
        model: "gpt-image-1",
        inputTokens: 1000,
        inputImageTokens: 600,
        outputTokens: 4000,
        outputImageTokens: 4000,
        outputImages: 1,
      }),
      audio: costmon.track({
        provider: "openai",
        model: "gpt-4o-mini-audio-preview",
        inputTokens: 1500,
        inputAudioTokens: 1000,
        outputTokens: 600,
        outputAudioTokens: 400,
      }),
      batch: costmon.track({ provider: "openai", model: "gpt-4o-mini", inputTokens: 1000, outputTokens: 1000, serviceTier: "batch" }),
      // OpenAI's own name for its standard tier is read as costmon's.
      standard: costmon.track({ provider: "openai", model: "gpt-4o-mini", inputTokens: 1000, serviceTier: "default" }),
    };

    assert.ok(await costmon.flush(10_000));
    const byId = Object.fromEntries((await events({ session_id: sessionId })).map((e) => [e.event_id, pricing(e)]));
    assert.deepEqual(byId, {
      // 600 x 2 + 2,000 x 0.20 + 300 x 2.50 + 100 x 4 + 200 x 10 = 4,750 USD per Mtok at the
      // priority tier, plus 4 searches at $10 per 1,000.
      [ids.priority]: {
        ...NONE,
        service_tier: "priority",
        cache_write_1h_tokens: 100,
        web_search_calls: 4,
        cost_usd: "0.04475",
        nanos: 44_750_000n,
      },
      // 400 x 5 + 600 x 10 (image input) + 4,000 x 40 (image output) = 168,000 USD per Mtok,
      // plus 1 image at $0.01.
      [ids.images]: {
        ...NONE,
        service_tier: "standard",
        input_image_tokens: 600,
        output_image_tokens: 4000,
        output_images: 1,
        cost_usd: "0.178",
        nanos: 178_000_000n,
      },
      // 500 x 0.15 + 1,000 x 10 + 200 x 0.60 + 400 x 20 = 18,195 USD per Mtok.
      [ids.audio]: {
        ...NONE,
        service_tier: "standard",
        input_audio_tokens: 1000,
        output_audio_tokens: 400,
        cost_usd: "0.018195",
        nanos: 18_195_000n,
      },
      // gpt-4o-mini's batch price: 1,000 x 0.075 + 1,000 x 0.30.
      [ids.batch]: { ...NONE, service_tier: "batch", cost_usd: "0.000375", nanos: 375_000n },
      [ids.standard]: { ...NONE, service_tier: "standard", cost_usd: "0.00015", nanos: 150_000n },
    });
    assert.deepEqual(await events({ session_id: sessionId }, env.outsiderKey), []);
  });

  test("parts that overlap are trimmed, so costmon never refuses the batch", async () => {
    const { sessionId, costmon } = session();

    // 1,000 audio tokens of which OpenAI also counted 1,200 cached: more parts than input.
    const overlapping = costmon.track({
      provider: "openai",
      model: "gpt-4o-mini-audio-preview",
      inputTokens: 1500,
      cachedInputTokens: 1200,
      inputAudioTokens: 1000,
      outputTokens: 100,
      outputAudioTokens: 300,
    });
    // One-hour writes reported beside the writes rather than as a part of them.
    const apart = costmon.track({ provider: "anthropic", model: "claude-haiku-4-5", inputTokens: 1000, cacheWrite1hTokens: 400 });

    assert.ok(await costmon.flush(10_000));
    assert.equal(costmon.stats().rejected, 0);
    const byId = Object.fromEntries((await events({ session_id: sessionId })).map((e) => [e.event_id, e]));
    // The audio left is what the cache did not cover: 1,200 x 0.075 + 300 x 10 + 100 x 20.
    const trimmed = byId[overlapping];
    assert.deepEqual([trimmed.input_audio_tokens, trimmed.output_audio_tokens, nanos(trimmed.cost_usd)], [300, 100, 5_090_000n]);
    // A total is never less than its part: 600 x 1 + 400 x 2.
    const whole = byId[apart];
    assert.deepEqual([whole.cache_write_tokens, whole.cache_write_1h_tokens, nanos(whole.cost_usd)], [400, 400, 1_400_000n]);
  });

  test("an unknown service tier is the caller's bug and throws before anything is queued", async () => {
    const { costmon } = session();

    assert.throws(
      () => costmon.track({ provider: "openai", model: "gpt-4o-mini", inputTokens: 10, serviceTier: "ultrafast" }),
      /serviceTier must be one of standard, batch, flex, priority/,
    );
    assert.equal(costmon.stats().queued, 0);
  });

  test("events without the new fields are sent as an older costmon takes them", async () => {
    const { costmon } = session({ url: gate.url, batchSize: 2 });
    const before = gate.passages.length;

    const plain = costmon.track({ provider: "openai", model: "gpt-4o-mini", inputTokens: 10, serviceTier: "default" });
    const searched = costmon.track({ provider: "openai", model: "gpt-4o-mini", inputTokens: 10, webSearchCalls: 2, serviceTier: "flex" });

    assert.ok(await costmon.flush(10_000));
    const sent = Object.fromEntries(
      gate.passages
        .slice(before)
        .filter((p) => p.path === "/api/v1/usage/")
        .flatMap((p) => p.body)
        .map((e) => [e.event_id, e]),
    );
    const named = (e) => Object.fromEntries(PRICING_FIELDS.filter((name) => name in e).map((name) => [name, e[name]]));
    assert.deepEqual(named(sent[plain]), {});
    assert.deepEqual(named(sent[searched]), { service_tier: "flex", web_search_calls: 2 });
  });
});
