// The real `@anthropic-ai/sdk`, wrapped, against the fake Anthropic API and a real costmon.
//
// Anthropic's `input_tokens` leaves out cache reads and writes; costmon counts all input. The fake
// API reports 100 uncached input tokens, 2,000 read from the cache, 500 written to it and 300
// output tokens; at claude-haiku-4-5's $1 / $5 per Mtok, $0.10 cache read and $1.25 cache write:
// 100 x 1 + 2,000 x 0.10 + 500 x 1.25 + 300 x 5 = 2,425 USD per Mtok = 2,425,000 nano-dollars.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import Anthropic from "@anthropic-ai/sdk";

import {
  ANTHROPIC_MODEL,
  FAILING_MODEL,
  FakeProvider,
  HELLO,
  env,
  events,
  makeCostmon,
  nanos,
  onlyEvent,
  started,
  uniqueId,
} from "./helpers.mjs";

const NANOS = 2_425_000n;
// A system prompt cached for an hour, and the web search tool: of the 500 cache writes 300 are
// one-hour writes ($2 per Mtok at the standard tier) and the model makes 3 searches ($10 per
// 1,000): 100 x 1 + 2,000 x 0.10 + 200 x 1.25 + 300 x 2 + 300 x 5 = 2,650 USD per Mtok, plus $0.03.
const SYSTEM = [{ type: "text", text: "You answer support questions.", cache_control: { type: "ephemeral", ttl: "1h" } }];
const WEB_SEARCH = [{ type: "web_search_20250305", name: "web_search", max_uses: 5 }];
const SEARCH_NANOS = 2_650_000n + 30_000_000n;
// The same served by the priority tier ($2 / $10, $0.20 cache reads, $2.50 and $4 cache writes):
// 100 x 2 + 2,000 x 0.20 + 200 x 2.50 + 300 x 4 + 300 x 10 = 5,300 USD per Mtok, plus $0.03.
const PRIORITY_SEARCH_NANOS = 5_300_000n + 30_000_000n;

const provider = await started(new FakeProvider());

function sdk() {
  return new Anthropic({ baseURL: provider.url, apiKey: "sk-ant-test", maxRetries: 0 });
}

function session() {
  const sessionId = uniqueId("anthropic");
  return { sessionId, costmon: makeCostmon({ sessionId }) };
}

const tokens = (e) => [e.input_tokens, e.cached_input_tokens, e.cache_write_tokens, e.output_tokens, nanos(e.cost_usd)];
const pricedParts = (e) => [e.service_tier, e.cache_write_tokens, e.cache_write_1h_tokens, e.web_search_calls, nanos(e.cost_usd)];

describe("anthropic", () => {
  test("a message counts cache reads and writes into the input, each at its price", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    const message = await client.messages.create({
      model: "claude-haiku-4-5",
      max_tokens: 500,
      messages: HELLO,
      metadata: { user_id: "user-42" },
    });

    assert.equal(message.content[0].text, "Hello there");
    assert.ok(await costmon.flush(10_000));
    const event = await onlyEvent({ session_id: sessionId });
    assert.deepEqual(tokens(event), [2600, 2000, 500, 300, NANOS]);
    assert.deepEqual(
      [event.provider, event.model, event.end_user, event.operation, event.cost_usd],
      ["anthropic", ANTHROPIC_MODEL, "user-42", "chat", "0.002425"], // the end user from metadata.user_id
    );
  });

  test("a raw stream is recorded from message_start and message_delta", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    const stream = await client.messages.create({ model: "claude-haiku-4-5", max_tokens: 500, messages: HELLO, stream: true });
    const kinds = [];
    for await (const event of stream) kinds.push(event.type);

    assert.deepEqual([kinds[0], kinds.at(-1)], ["message_start", "message_stop"]);
    assert.ok(await costmon.flush(10_000));
    // message_start said 1 output token; message_delta's cumulative 300 wins.
    assert.deepEqual(tokens(await onlyEvent({ session_id: sessionId })), [2600, 2000, 500, 300, NANOS]);
  });

  test("messages.stream() is recorded once, from the stream it reads", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk(), { operation: "support-reply" });

    const stream = client.messages.stream({ model: "claude-haiku-4-5", max_tokens: 500, messages: HELLO });
    let text = "";
    stream.on("text", (delta) => {
      text += delta;
    });
    const final = await stream.finalMessage();

    assert.equal(text, "Hello there");
    assert.equal(final.usage.output_tokens, 300);
    assert.ok(await costmon.flush(10_000));
    const event = await onlyEvent({ session_id: sessionId });
    assert.deepEqual(tokens(event), [2600, 2000, 500, 300, NANOS]);
    assert.equal(event.operation, "support-reply");
  });

  test("a stream that fails midway is an error with the input already reported", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());
    provider.anthropicStreamError = true;

    const stream = await client.messages.create({ model: "claude-haiku-4-5", max_tokens: 500, messages: HELLO, stream: true });
    const error = await (async () => {
      for await (const _ of stream);
    })().catch((e) => e);

    assert.ok(error instanceof Anthropic.APIError, String(error));
    assert.ok(await costmon.flush(10_000));
    const event = await onlyEvent({ session_id: sessionId });
    // What message_start reported: all the input and 1 output token, so far.
    // 100 + 200 + 625 + 1 x 5 = 930 USD per Mtok.
    assert.deepEqual([event.status, ...tokens(event)], ["error", 2600, 2000, 500, 1, 930_000n]);
  });

  test("a failing message is an error and the exception is the SDK's", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    const error = await client.messages.create({ model: FAILING_MODEL, max_tokens: 10, messages: HELLO }).catch((e) => e);

    assert.ok(error instanceof Anthropic.InternalServerError);
    assert.ok(await costmon.flush(10_000));
    const event = await onlyEvent({ session_id: sessionId });
    assert.deepEqual([event.status, event.model, nanos(event.cost_usd)], ["error", FAILING_MODEL, 0n]);
  });

  test("the beta namespace and a per-call end user are tracked too", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    await client.beta.messages.create({
      model: "claude-haiku-4-5",
      max_tokens: 500,
      messages: HELLO,
      metadata: { user_id: "from-metadata" },
      costmonEndUser: "from-call",
    });

    const sent = provider.bodies("/v1/messages").at(-1);
    assert.equal(sent.costmonEndUser, undefined);
    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    assert.deepEqual(found.map((e) => [e.end_user, ...tokens(e)]), [["from-call", 2600, 2000, 500, 300, NANOS]]);
  });

  test("the wrapped client is still an Anthropic client", async () => {
    const costmon = makeCostmon();
    const original = sdk();
    const client = costmon.wrap(original);

    assert.equal(client, original);
    assert.ok(client instanceof Anthropic);
    assert.equal(client.messages.countTokens.name, "countTokens"); // passed through untouched
  });

  test("one-hour cache writes and web searches are priced at their rates", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());

    await client.messages.create({ model: "claude-haiku-4-5", max_tokens: 500, system: SYSTEM, tools: WEB_SEARCH, messages: HELLO });
    // Without them, the same reply's zero counts change nothing.
    await client.messages.create({ model: "claude-haiku-4-5", max_tokens: 500, messages: HELLO });

    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    assert.deepEqual(found.map(tokens), [
      [2600, 2000, 500, 300, SEARCH_NANOS],
      [2600, 2000, 500, 300, NANOS],
    ]);
    assert.deepEqual(found.map(pricedParts), [
      ["standard", 500, 300, 3, SEARCH_NANOS],
      ["standard", 500, 0, 0, NANOS],
    ]);
    assert.equal(found[0].cost_usd, "0.03265");
    assert.deepEqual(await events({ session_id: sessionId }, env.outsiderKey), []);
  });

  test("a priority stream is priced from message_start's tier and message_delta's search count, raw and through the helper", async () => {
    const { sessionId, costmon } = session();
    const client = costmon.wrap(sdk());
    // service_tier "auto": the organisation has Priority Tier capacity.
    const request = { model: "claude-haiku-4-5", max_tokens: 500, system: SYSTEM, tools: WEB_SEARCH, messages: HELLO, service_tier: "auto" };

    const starts = [];
    for await (const event of await client.messages.create({ ...request, stream: true })) {
      if (event.type === "message_start") starts.push(event.message.usage);
    }
    const final = await client.messages.stream(request).finalMessage();

    // message_start says 0 searches and the tier; message_delta's cumulative 3 wins.
    assert.deepEqual(starts.map((u) => [u.service_tier, u.server_tool_use.web_search_requests]), [["priority", 0]]);
    assert.equal(final.usage.server_tool_use.web_search_requests, 3);
    assert.ok(await costmon.flush(10_000));
    const found = await events({ session_id: sessionId });
    assert.deepEqual(found.map(pricedParts), Array(2).fill(["priority", 500, 300, 3, PRIORITY_SEARCH_NANOS]));
    assert.deepEqual(found.map((e) => e.cost_usd), ["0.0353", "0.0353"]);
    assert.deepEqual(await events({ session_id: sessionId }, env.outsiderKey), []);
  });
});
