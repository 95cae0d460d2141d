// The real `openai` SDK, wrapped, against the fake OpenAI API and a real costmon: every call's
// tokens arrive and are priced exactly (gpt-4o-mini $0.15 / $0.60 per Mtok, cached input $0.075;
// o4-mini $1.10 / $4.40, cached $0.275; text-embedding-3-large $0.13).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import OpenAI from "openai";

import { costmonOptions, withContext } from "../dist/esm/index.js";
import {
  AUDIO_MODEL,
  EMBEDDING_MODEL,
  FAILING_MODEL,
  FakeProvider,
  HELLO,
  OPENAI_MODEL,
  REASONING_MODEL,
  env,
  events,
  makeCostmon,
  nanos,
  onlyEvent,
  started,
  uniqueId,
} from "./helpers.mjs";

// 1,200 prompt tokens of which 1,000 cached, 300 completion tokens:
// 200 x 0.15 + 1,000 x 0.075 + 300 x 0.60 = 285 USD per Mtok = 285,000 nano-dollars.
const CHAT_NANOS = 285_000n;
// Streamed: 2,000 prompt tokens, 500 completion: 2,000 x 0.15 + 500 x 0.60 = 600.
const STREAM_NANOS = 600_000n;
// o4-mini: 1,500 prompt tokens of which 1,024 cached, 2,500 completion tokens (2,048 of them
// reasoning, charged as output): 476 x 1.10 + 1,024 x 0.275 + 2,500 x 4.40 = 11,805.2.
const REASONING_NANOS = 11_805_200n;
// Responses: 800 input of which 200 cached, 100 output (20 reasoning):
// 600 x 0.15 + 200 x 0.075 + 100 x 0.60 = 165.
const RESPONSES_NANOS = 165_000n;
// The chat calls served by the flex tier, at half the rates (tests/client/prices.py):
// 200 x 0.075 + 1,000 x 0.0375 + 300 x 0.30 = 142.5, and 2,000 x 0.075 + 500 x 0.30 = 300.
const FLEX_CHAT_NANOS = 142_500n;
const FLEX_STREAM_NANOS = 300_000n;
// Audio: 1,500 prompt tokens of which 1,000 audio and 200 cached, 600 completion tokens of which
// 400 audio, at gpt-4o-mini-audio-preview's $0.15 / $0.60 text, $10 / $20 audio, $0.075 cached:
// 300 x 0.15 + 200 x 0.075 + 1,000 x 10 + 200 x 0.60 + 400 x 20 = 18,180 USD per Mtok.
const AUDIO_NANOS = 18_180_000n;
// Responses with 2 billable web searches at $10 per 1,000: on the priority tier
// 600 x 0.25 + 200 x 0.125 + 100 x 1 = 275 USD per Mtok, plus $0.02; standard: 165 plus $0.02.
const PRIORITY_SEARCH_NANOS = 275_000n + 20_000_000n;
const STANDARD_SEARCH_NANOS = 165_000n + 20_000_000n;
const AUDIO = { modalities: ["text", "audio"], audio: { voice: "alloy", format: "pcm16" } };

/** The event's new pricing fields, and its exact cost. */
function parts(e) {
  return {
    service_tier: e.service_tier,
    cache_write_1h_tokens: e.cache_write_1h_tokens,
    input_audio_tokens: e.input_audio_tokens,
    input_image_tokens: e.input_image_tokens,
    output_audio_tokens: e.output_audio_tokens,
    output_image_tokens: e.output_image_tokens,
    web_search_calls: e.web_search_calls,
    output_images: e.output_images,
    nanos: nanos(e.cost_usd),
  };
}

const NO_PARTS = {
  service_tier: "standard",
  cache_write_1h_tokens: 0,
  input_audio_tokens: 0,
  input_image_tokens: 0,
  output_audio_tokens: 0,
  output_image_tokens: 0,
  web_search_calls: 0,
  output_images: 0,
};

const provider = await started(new FakeProvider());

function sdk(options = {}) {
  return new OpenAI({ baseURL: `${provider.url}/v1`, apiKey: "sk-test", maxRetries: 0, ...options });
}

/** A client whose events all carry one session id, so a test reads back only its own. */
function session() {
  const sessionId = uniqueId("openai");
  return { sessionId, costmon: makeCostmon({ sessionId }) };
}

describe("openai", () => {
  test("a chat completion is recorded with its tokens and exact cost", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk(), { endUser: "wrapper-user", tags: { team: "search" } });

    const reply = await client.chat.completions.create({ model: "gpt-4o-mini", messages: HELLO });

    assert.equal(reply.choices[0].message.content, "Hello there"); // the SDK's own object
    assert.ok(await costmon.flush(10_000));
    const { event_id, occurred_at, latency_ms, ...event } = await onlyEvent({ session_id: sessionId });
    assert.deepEqual(event, {
      provider: "openai",
      model: OPENAI_MODEL, // the model that answered, not the alias asked for
      operation: "chat",
      end_user: "wrapper-user",
      session_id: sessionId,
      tags: { team: "search" },
      input_tokens: 1200,
      output_tokens: 300,
      cached_input_tokens: 1000,
      cache_write_tokens: 0,
      reasoning_tokens: 0,
      cache_write_1h_tokens: 0,
      input_audio_tokens: 0,
      output_audio_tokens: 0,
      input_image_tokens: 0,
      output_image_tokens: 0,
      web_search_calls: 0,
      output_images: 0,
      service_tier: "standard",
      cost_usd: "0.000285",
      cost_source: "computed",
      status: "success",
      cache_hit: false,
      prompt_hash: "",
    });
    assert.equal(nanos(event.cost_usd), CHAT_NANOS);
    assert.match(event_id, /^[0-9a-f-]{36}$/);
    assert.ok(latency_ms >= 0 && Date.parse(occurred_at) <= Date.now());
  });

  test("a reasoning model's reasoning tokens are recorded and charged as output", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    await client.chat.completions.create({ model: "o4-mini", messages: HELLO });

    assert.ok(await costmon.flush(10_000));
    const event = await onlyEvent({ session_id: sessionId });
    assert.deepEqual(
      [event.model, event.input_tokens, event.cached_input_tokens, event.output_tokens, event.reasoning_tokens],
      [REASONING_MODEL, 1500, 1024, 2500, 2048],
    );
    assert.equal(event.cost_usd, "0.0118052");
    assert.equal(nanos(event.cost_usd), REASONING_NANOS);
  });

  test("a streamed chat asks for usage, hides the usage chunk and records it", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());
    const body = { model: "gpt-4o-mini", messages: HELLO, stream: true };

    const stream = await client.chat.completions.create(body);
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);

    const sent = provider.bodies("/v1/chat/completions").at(-1);
    assert.deepEqual(sent.stream_options, { include_usage: true });
    assert.equal(body.stream_options, undefined); // the application's own object is untouched
    // The usage-only chunk the application did not ask for is not passed on to it.
    assert.ok(chunks.every((chunk) => chunk.choices.length > 0));
    assert.equal(chunks.map((c) => c.choices[0].delta.content ?? "").join(""), "Hello there");
    assert.ok(await costmon.flush(10_000));
    const event = await onlyEvent({ session_id: sessionId });
    assert.deepEqual([event.input_tokens, event.output_tokens, nanos(event.cost_usd)], [2000, 500, STREAM_NANOS]);
  });

  test("a stream the application asked usage for keeps its usage chunk", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    const stream = await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: HELLO,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);

    assert.deepEqual(chunks.at(-1).choices, []);
    assert.equal(chunks.at(-1).usage.prompt_tokens, 2000);
    assert.ok(await costmon.flush(10_000));
    assert.equal(nanos((await onlyEvent({ session_id: sessionId })).cost_usd), STREAM_NANOS);
  });

  test("a streamed reasoning call is priced from its last chunk", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    const stream = await client.chat.completions.create({ model: "o4-mini", messages: HELLO, stream: true });
    for await (const chunk of stream) assert.ok(chunk.choices.length > 0);

    assert.ok(await costmon.flush(10_000));
    const event = await onlyEvent({ session_id: sessionId });
    assert.deepEqual([event.reasoning_tokens, nanos(event.cost_usd)], [2048, REASONING_NANOS]);
  });

  test("a stream left early is recorded with what was read", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    const stream = await client.chat.completions.create({ model: "gpt-4o-mini", messages: HELLO, stream: true });
    let first;
    for await (const chunk of stream) {
      first = chunk;
      break;
    }

    assert.equal(first.choices[0].delta.content, "Hel");
    assert.ok(await costmon.flush(10_000));
    const event = await onlyEvent({ session_id: sessionId });
    // The usage would have come in the last chunk, which was never read.
    assert.deepEqual([event.status, event.model, event.output_tokens], ["success", OPENAI_MODEL, 0]);
  });

  test("the chat stream helper and parse() are each recorded once", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    const runner = client.chat.completions.stream({ model: "gpt-4o-mini", messages: HELLO });
    const final = await runner.finalChatCompletion();
    const parsed = await client.chat.completions.parse({ model: "gpt-4o-mini", messages: HELLO });

    assert.equal(final.choices[0].message.content, "Hello there");
    assert.equal(parsed.choices[0].message.content, "Hello there");
    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    assert.deepEqual(found.map((e) => nanos(e.cost_usd)).sort(), [CHAT_NANOS, STREAM_NANOS].sort());
  });

  test("embeddings are recorded as input tokens", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    const result = await client.embeddings.create({ model: EMBEDDING_MODEL, input: "a long document" });

    assert.equal(result.data.length, 1);
    assert.ok(await costmon.flush(10_000));
    const event = await onlyEvent({ session_id: sessionId });
    // 1,000 tokens x $0.13 per Mtok.
    assert.deepEqual(
      [event.operation, event.model, event.input_tokens, event.output_tokens, event.cost_usd, nanos(event.cost_usd)],
      ["embeddings", EMBEDDING_MODEL, 1000, 0, "0.00013", 130_000n],
    );
  });

  test("the Responses API is recorded plain, streamed and through its stream helper", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    const response = await client.responses.create({ model: "gpt-4o-mini", input: "Hi" });
    const streamed = [];
    for await (const event of await client.responses.create({ model: "gpt-4o-mini", input: "Hi", stream: true })) {
      streamed.push(event.type);
    }
    const helper = client.responses.stream({ model: "gpt-4o-mini", input: "Hi" });
    const final = await helper.finalResponse();

    assert.equal(response.output_text, "Hi");
    assert.equal(streamed.at(-1), "response.completed");
    assert.equal(final.output[0].content[0].text, "Hi");
    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    assert.deepEqual(
      found.map((e) => [e.input_tokens, e.cached_input_tokens, e.reasoning_tokens, nanos(e.cost_usd)]),
      Array(3).fill([800, 200, 20, RESPONSES_NANOS]),
    );
  });

  test("the end user comes from the call, then the context, then the SDK's user, then the wrapper", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk(), { endUser: "from-wrapper" });

    await client.chat.completions.create({ model: "gpt-4o-mini", messages: HELLO });
    await client.chat.completions.create({ model: "gpt-4o-mini", messages: HELLO, user: "from-openai-user" });
    await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: HELLO,
      user: "from-openai-user",
      costmonEndUser: "from-call",
      costmonOperation: "summarize",
      costmonTags: { feature: "digest" },
    });
    await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: HELLO,
      ...costmonOptions({ endUser: "from-typed-options", operation: "typed" }),
    });
    await withContext({ endUser: "from-context", tags: { region: "eu" } }, async () => {
      await Promise.resolve();
      await client.chat.completions.create({ model: "gpt-4o-mini", messages: HELLO });
    });

    const bodies = provider.bodies("/v1/chat/completions").slice(-5);
    assert.ok(bodies.every((body) => Object.keys(body).every((key) => !key.startsWith("costmon"))));
    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    assert.deepEqual(
      found.map((e) => [e.end_user, e.operation, e.tags]).sort(),
      [
        ["from-call", "summarize", { feature: "digest" }],
        ["from-context", "chat", { region: "eu" }],
        ["from-openai-user", "chat", {}],
        ["from-typed-options", "typed", {}],
        ["from-wrapper", "chat", {}],
      ],
    );
    assert.ok(found.every((e) => nanos(e.cost_usd) === CHAT_NANOS));
  });

  test("a failing call is recorded as an error and the SDK's error reaches the app unchanged", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    const error = await client.chat.completions.create({ model: FAILING_MODEL, messages: HELLO }).catch((e) => e);

    assert.ok(error instanceof OpenAI.InternalServerError);
    assert.equal(error.status, 500);
    assert.match(error.message, /the fake provider failed/);
    assert.ok(await costmon.flush(10_000));
    const event = await onlyEvent({ session_id: sessionId });
    assert.deepEqual([event.status, event.model, event.input_tokens, event.cost_usd], ["error", FAILING_MODEL, 0, "0"]);
  });

  test("the wrapped client is the SDK's client, also through withOptions() and withResponse()", async () => {
    const { sessionId, costmon } = session();
    const original = sdk();

    const client = costmon.wrap(original);
    const copy = client.withOptions({ timeout: 5000 }); // reports as its parent did when made
    const again = costmon.wrap(client, { operation: "rewrapped" }); // new settings, never counted twice
    const { data, response } = await copy.chat.completions.create({ model: "gpt-4o-mini", messages: HELLO }).withResponse();
    await again.chat.completions.create({ model: "gpt-4o-mini", messages: HELLO });

    assert.equal(client, original);
    assert.equal(again, original);
    assert.ok(client instanceof OpenAI);
    assert.ok(copy instanceof OpenAI);
    assert.equal(client.chat.completions.create.name, "create");
    assert.equal(data.choices[0].message.content, "Hello there");
    assert.equal(response.status, 200);
    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    assert.deepEqual(found.map((e) => e.operation).sort(), ["chat", "rewrapped"]);
  });

  test("a call served by the flex tier is priced at flex rates, plain, streamed and through the helper", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());
    const flex = { model: "gpt-4o-mini", messages: HELLO, service_tier: "flex" };

    await client.chat.completions.create(flex);
    for await (const chunk of await client.chat.completions.create({ ...flex, stream: true })) assert.ok(chunk.choices.length > 0);
    await client.chat.completions.stream(flex).finalChatCompletion();
    // The provider answers "default" when no tier was asked for: the standard rates.
    await client.chat.completions.create({ model: "gpt-4o-mini", messages: HELLO });

    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    assert.deepEqual(
      found.map((e) => [e.service_tier, e.input_tokens, nanos(e.cost_usd)]),
      [
        ["flex", 1200, FLEX_CHAT_NANOS],
        ["flex", 2000, FLEX_STREAM_NANOS],
        ["flex", 2000, FLEX_STREAM_NANOS],
        ["standard", 1200, CHAT_NANOS],
      ],
    );
    assert.deepEqual(await events({ session_id: sessionId }, env.outsiderKey), []);
  });

  test("OpenAI's fast mode is its priority tier, priced at the priority rates", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    await client.chat.completions.create({ model: "gpt-4o-mini", messages: HELLO, service_tier: "fast" });

    assert.ok(await costmon.flush(10_000));
    // 200 x 0.25 + 1,000 x 0.125 + 300 x 1 = 475 USD per Mtok.
    assert.deepEqual(parts(await onlyEvent({ session_id: sessionId })), { ...NO_PARTS, service_tier: "priority", nanos: 475_000n });
  });

  test("audio tokens are priced at the audio rates, plain and streamed", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    const reply = await client.chat.completions.create({ model: "gpt-4o-mini-audio-preview", messages: HELLO, ...AUDIO });
    const chunks = [];
    for await (const chunk of await client.chat.completions.create({ model: "gpt-4o-mini-audio-preview", messages: HELLO, stream: true, ...AUDIO })) {
      chunks.push(chunk);
    }

    assert.equal(reply.choices[0].message.audio.transcript, "Hello there");
    assert.ok(chunks.every((chunk) => chunk.choices.length > 0)); // the usage chunk stays hidden
    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    assert.deepEqual(
      found.map((e) => [e.model, e.input_tokens, e.cached_input_tokens, e.output_tokens, e.cost_usd]),
      Array(2).fill([AUDIO_MODEL, 1500, 200, 600, "0.01818"]),
    );
    assert.deepEqual(found.map(parts), Array(2).fill({ ...NO_PARTS, input_audio_tokens: 1000, output_audio_tokens: 400, nanos: AUDIO_NANOS }));
    assert.deepEqual(await events({ session_id: sessionId }, env.outsiderKey), []);
  });

  test("the Responses API reports its billable web searches and its tier, plain, streamed and through the helper", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());
    const request = { model: "gpt-4o-mini", input: "Hi", tools: [{ type: "web_search" }], service_tier: "priority" };

    const plain = await client.responses.create(request);
    const streamed = [];
    for await (const event of await client.responses.create({ ...request, stream: true })) streamed.push(event);
    await client.responses.stream(request).finalResponse();
    // A reply without tool_usage: its web_search_call items that searched are counted (the page
    // it opened is not a billed search).
    const older = await client.responses.create({ ...request, service_tier: undefined, metadata: { fake: "no_tool_usage" } });

    assert.equal(plain.tool_usage.web_search.num_requests, 2);
    assert.equal(streamed.at(-1).response.service_tier, "priority");
    assert.deepEqual([older.tool_usage, older.output.length], [undefined, 4]);
    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    assert.deepEqual(found.map(parts), [
      ...Array(3).fill({ ...NO_PARTS, service_tier: "priority", web_search_calls: 2, nanos: PRIORITY_SEARCH_NANOS }),
      { ...NO_PARTS, web_search_calls: 2, nanos: STANDARD_SEARCH_NANOS },
    ]);
    assert.deepEqual(found.map((e) => e.cost_usd), ["0.020275", "0.020275", "0.020275", "0.020165"]);
    assert.deepEqual(await events({ session_id: sessionId }, env.outsiderKey), []);
  });
});
