// Shared by the Node tests: the costmon the pytest driver started (its URL and keys come in the
// environment), a fake LLM provider answering as the OpenAI and Anthropic APIs do (JSON and
// server-sent events, with usage), and a gate in front of costmon that a test can stop, hold,
// fail or let through.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import http from "node:http";
import { after } from "node:test";

import { Costmon } from "../dist/esm/index.js";

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: these tests run against a real costmon started by ` +
        "`pytest tests/client_js` (see clients/js/README.md)",
    );
  }
  return value;
}

export const env = {
  url: required("COSTMON_TEST_URL"),
  key: required("COSTMON_TEST_KEY"),
  readKey: required("COSTMON_TEST_READ_KEY"),
  outsiderKey: required("COSTMON_TEST_OUTSIDER_KEY"),
  checkKey: required("COSTMON_TEST_CHECK_KEY"),
  checkAdminKey: required("COSTMON_TEST_CHECK_ADMIN_KEY"),
  rateLimitedUser: required("COSTMON_TEST_RATE_LIMITED_USER"),
};

export const OPENAI_MODEL = "gpt-4o-mini-2024-07-18"; // a dated snapshot: costmon prices it as gpt-4o-mini
export const AUDIO_MODEL = "gpt-4o-mini-audio-preview-2024-12-17"; // answers a chat that asks for audio
export const REASONING_MODEL = "o4-mini-2025-04-16";
export const ANTHROPIC_MODEL = "claude-haiku-4-5-20251001";
export const EMBEDDING_MODEL = "text-embedding-3-large";
export const FAILING_MODEL = "boom"; // the fake provider answers 500 for this model

// What the fake provider reports, per API and model.
export const CHAT_USAGE = {
  prompt_tokens: 1200,
  completion_tokens: 300,
  total_tokens: 1500,
  prompt_tokens_details: { cached_tokens: 1000, audio_tokens: 0 },
  completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0 },
};
export const CHAT_STREAM_USAGE = {
  prompt_tokens: 2000,
  completion_tokens: 500,
  total_tokens: 2500,
  prompt_tokens_details: { cached_tokens: 0 },
  completion_tokens_details: { reasoning_tokens: 0 },
};
export const REASONING_USAGE = {
  prompt_tokens: 1500,
  completion_tokens: 2500,
  total_tokens: 4000,
  prompt_tokens_details: { cached_tokens: 1024 },
  completion_tokens_details: { reasoning_tokens: 2048 },
};
// A chat that asked for audio: 1,500 prompt tokens (1,000 of them audio, 200 cached), 600
// completion tokens (400 of them audio).
export const AUDIO_CHAT_USAGE = {
  prompt_tokens: 1500,
  completion_tokens: 600,
  total_tokens: 2100,
  prompt_tokens_details: { cached_tokens: 200, audio_tokens: 1000, text_tokens: 500, image_tokens: 0 },
  completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 400, text_tokens: 200 },
};
export const RESPONSES_USAGE = {
  input_tokens: 800,
  input_tokens_details: { cached_tokens: 200 },
  output_tokens: 100,
  output_tokens_details: { reasoning_tokens: 20 },
  total_tokens: 900,
};
export const EMBEDDING_USAGE = { prompt_tokens: 1000, total_tokens: 1000 };
export const ANTHROPIC_USAGE = {
  input_tokens: 100, // the uncached part only, as Anthropic counts
  cache_read_input_tokens: 2000,
  cache_creation_input_tokens: 500,
  output_tokens: 300,
  cache_creation: { ephemeral_5m_input_tokens: 500, ephemeral_1h_input_tokens: 0 },
  server_tool_use: { web_search_requests: 0, web_fetch_requests: 0 },
  service_tier: "standard",
};
// Of the 500 cache writes, 300 for an hour when the request asked for a one-hour cache.
export const ONE_HOUR_WRITES = { ephemeral_5m_input_tokens: 200, ephemeral_1h_input_tokens: 300 };
export const WEB_SEARCHES = { openai: 2, anthropic: 3 }; // searches made when the request offers the tool

/** The tier OpenAI says served a request: what it asked for, else its default. */
function openaiTier(body) {
  return { flex: "flex", priority: "priority", fast: "priority" }[body.service_tier] ?? "default";
}

function offersWebSearch(body) {
  return (body.tools ?? []).some((tool) => String(tool.type ?? "").startsWith("web_search"));
}

/**
 * Anthropic's usage for a request: one-hour cache writes when a block asked for them, web
 * searches when the tool was offered, and the priority tier for `service_tier: "auto"` (as for
 * an organisation with Priority Tier capacity).
 */
function anthropicUsage(body, searches = offersWebSearch(body) ? WEB_SEARCHES.anthropic : 0) {
  return {
    ...ANTHROPIC_USAGE,
    cache_creation: JSON.stringify(body).includes('"ttl":"1h"') ? ONE_HOUR_WRITES : ANTHROPIC_USAGE.cache_creation,
    server_tool_use: { web_search_requests: searches, web_fetch_requests: 0 },
    service_tier: body.service_tier === "auto" ? "priority" : "standard",
  };
}

export const HELLO = [{ role: "user", content: "Say hello" }];

export function uniqueId(prefix = "t") {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

/** A decimal USD string as integer nano-dollars, exactly. */
export function nanos(usd) {
  const [whole, fraction = ""] = usd.split(".");
  return BigInt(whole) * 1_000_000_000n + BigInt((fraction + "000000000").slice(0, 9));
}

export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Costmon clients for acme, fast to flush and retry, shut down after the test file. */
const made = [];
after(async () => {
  await Promise.all(made.map((client) => client.shutdown(2000)));
});

export function makeCostmon(options = {}) {
  const client = new Costmon({
    url: env.url,
    apiKey: env.key,
    flushInterval: 50,
    retryDelay: 20,
    maxRetryDelay: 200,
    shutdownTimeout: 2000,
    logger: null,
    ...options,
  });
  made.push(client);
  return client;
}

// --- reading back what costmon stored -------------------------------------------------------------

export async function api(path, key = env.readKey, init = {}) {
  const response = await fetch(env.url + path, {
    ...init,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json", ...init.headers },
  });
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: response.status, body, headers: response.headers };
}

/** Every stored event matching the filters (e.g. { session_id }), oldest first. */
export async function events(filters, key = env.readKey) {
  const found = [];
  let cursor = null;
  do {
    const params = new URLSearchParams({ ...filters, limit: "1000" });
    if (cursor) params.set("cursor", cursor);
    const { status, body } = await api(`/api/v1/usage/?${params}`, key);
    assert.equal(status, 200, JSON.stringify(body));
    found.push(...body.results);
    cursor = body.next_cursor;
  } while (cursor);
  return found.reverse();
}

export async function onlyEvent(filters, key) {
  const found = await events(filters, key);
  assert.equal(found.length, 1, `expected one event for ${JSON.stringify(filters)}, got ${JSON.stringify(found)}`);
  return found[0];
}

export async function metrics(params, key = env.readKey) {
  const { status, body } = await api(`/api/v1/metrics/?${new URLSearchParams({ period: "day", ...params })}`, key);
  assert.equal(status, 200, JSON.stringify(body));
  return body;
}

// --- HTTP servers on 127.0.0.1 --------------------------------------------------------------------

function listen(server, port = 0) {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => {
      server.off("error", reject);
      resolve(server.address().port);
    });
  });
}

function readBody(request) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => resolve(Buffer.concat(chunks)));
    request.on("error", reject);
  });
}

function sse(events) {
  return events
    .map(([name, data]) => `${name ? `event: ${name}\n` : ""}data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`)
    .join("");
}

/** A port nothing listens on: a costmon that is down. */
export async function freePort() {
  const server = http.createServer();
  const port = await listen(server);
  await new Promise((resolve) => server.close(resolve));
  return port;
}

// --- the fake LLM provider ------------------------------------------------------------------------

/**
 * Answers `/v1/chat/completions`, `/v1/embeddings`, `/v1/responses` (OpenAI) and `/v1/messages`
 * (Anthropic) with fixed usage; records every request body. `delayMs` holds every answer.
 */
export class FakeProvider {
  received = [];
  delayMs = 0;
  anthropicStreamError = false; // the next Anthropic stream fails after message_start

  async start() {
    this.server = http.createServer((request, response) => this.handle(request, response));
    this.server.keepAliveTimeout = 30_000;
    const port = await listen(this.server);
    this.url = `http://127.0.0.1:${port}`;
    return this;
  }

  async stop() {
    this.server.closeAllConnections?.();
    await new Promise((resolve) => this.server.close(resolve));
  }

  bodies(path) {
    return this.received.filter((r) => r.path === path).map((r) => r.body);
  }

  async handle(request, response) {
    const body = JSON.parse((await readBody(request)).toString() || "{}");
    this.received.push({ path: request.url, body });
    if (this.delayMs) await sleep(this.delayMs);
    const send = (status, payload, type = "application/json") => {
      const data = typeof payload === "string" ? payload : JSON.stringify(payload);
      response.writeHead(status, { "Content-Type": type, "Content-Length": Buffer.byteLength(data) });
      response.end(data);
    };
    if (body.model === FAILING_MODEL) {
      send(500, { error: { type: "server_error", message: "the fake provider failed" } });
      return;
    }
    const route = {
      "/v1/chat/completions": () => this.chat(body),
      "/v1/embeddings": () => this.embeddings(),
      "/v1/responses": () => this.responses(body),
      "/v1/messages": () => this.messages(body),
    }[request.url];
    if (!route) {
      send(404, { error: { message: "no such route" } });
      return;
    }
    const payload = route();
    send(200, payload, body.stream === true ? "text/event-stream" : "application/json");
  }

  chat(body) {
    const reasoning = String(body.model).startsWith("o4-mini");
    const audio = (body.modalities ?? []).includes("audio");
    const base = {
      id: "chatcmpl-1",
      created: 1_764_000_000,
      model: reasoning ? REASONING_MODEL : audio ? AUDIO_MODEL : OPENAI_MODEL,
      service_tier: openaiTier(body),
    };
    const usage = reasoning ? REASONING_USAGE : audio ? AUDIO_CHAT_USAGE : null;
    if (body.stream !== true) {
      const message = audio
        ? { role: "assistant", content: null, refusal: null, audio: { id: "audio_1", data: "UklGRg==", expires_at: 1_764_003_600, transcript: "Hello there" } }
        : { role: "assistant", content: "Hello there", refusal: null };
      return {
        ...base,
        object: "chat.completion",
        choices: [{ index: 0, message, finish_reason: "stop", logprobs: null }],
        usage: usage ?? CHAT_USAGE,
      };
    }
    const chunk = { ...base, object: "chat.completion.chunk" };
    const events = ["Hel", "lo ", "there"].map((text) => [
      null,
      { ...chunk, choices: [{ index: 0, delta: { role: "assistant", content: text }, finish_reason: null }], usage: null },
    ]);
    events.push([null, { ...chunk, choices: [{ index: 0, delta: {}, finish_reason: "stop" }], usage: null }]);
    if (body.stream_options?.include_usage) {
      // As OpenAI does: only when asked, a last chunk with no choices and the usage.
      events.push([null, { ...chunk, choices: [], usage: usage ?? CHAT_STREAM_USAGE }]);
    }
    events.push([null, "[DONE]"]);
    return sse(events);
  }

  embeddings() {
    return {
      object: "list",
      data: [{ object: "embedding", index: 0, embedding: [0.25, -0.5, 0.125] }],
      model: EMBEDDING_MODEL,
      usage: EMBEDDING_USAGE,
    };
  }

  responses(body) {
    const searches = offersWebSearch(body) ? WEB_SEARCHES.openai : 0;
    // Searches, and a page opened (not a billed search), before the answer.
    const searchCalls = Array.from({ length: searches }, (_, n) => ({
      type: "web_search_call",
      id: `ws_${n}`,
      status: "completed",
      action: { type: "search", query: "costmon" },
    }));
    if (searches) {
      searchCalls.push({ type: "web_search_call", id: "ws_open", status: "completed", action: { type: "open_page", url: "https://example.com/" } });
    }
    // As OpenAI reports hosted tools' billable use; an older API version does not.
    const omitToolUsage = body.metadata?.fake === "no_tool_usage";
    const response = (status, usage) => {
      const done = status === "completed";
      return {
        id: "resp_1",
        object: "response",
        created_at: 1_764_000_000,
        status,
        model: OPENAI_MODEL,
        service_tier: done ? openaiTier(body) : (body.service_tier ?? "auto"),
        output: done
          ? [...searchCalls, { type: "message", id: "msg_1", status: "completed", role: "assistant", content: [{ type: "output_text", text: "Hi", annotations: [] }] }]
          : [],
        parallel_tool_calls: true,
        tool_choice: "auto",
        tools: [],
        usage,
        ...(done && !omitToolUsage
          ? {
              tool_usage: {
                web_search: { num_requests: searches },
                image_gen: { input_tokens: 0, input_tokens_details: { image_tokens: 0, text_tokens: 0 }, output_tokens: 0, total_tokens: 0 },
              },
            }
          : {}),
      };
    };
    if (body.stream !== true) return response("completed", RESPONSES_USAGE);
    const item = { type: "message", id: "msg_1", status: "in_progress", role: "assistant", content: [] };
    const part = { type: "output_text", text: "", annotations: [] };
    const at = { item_id: "msg_1", output_index: 0, content_index: 0 };
    return sse(
      [
        { type: "response.created", response: response("in_progress", null) },
        { type: "response.output_item.added", output_index: 0, item },
        { type: "response.content_part.added", ...at, part },
        { type: "response.output_text.delta", ...at, delta: "Hi", logprobs: [] },
        { type: "response.output_text.done", ...at, text: "Hi", logprobs: [] },
        { type: "response.content_part.done", ...at, part: { ...part, text: "Hi" } },
        { type: "response.output_item.done", output_index: 0, item: response("completed", null).output[0] },
        { type: "response.completed", response: response("completed", RESPONSES_USAGE) },
      ].map((event, sequence_number) => [event.type, { ...event, sequence_number }]),
    );
  }

  messages(body) {
    const message = { id: "msg_1", type: "message", role: "assistant", model: ANTHROPIC_MODEL, stop_sequence: null };
    if (body.stream !== true) {
      return { ...message, content: [{ type: "text", text: "Hello there" }], stop_reason: "end_turn", usage: anthropicUsage(body) };
    }
    // The searches are counted by message_delta (cumulative); message_start has none yet.
    const startUsage = { ...anthropicUsage(body, 0), output_tokens: 1 };
    const endUsage = anthropicUsage(body);
    const events = [
      ["message_start", { type: "message_start", message: { ...message, content: [], stop_reason: null, usage: startUsage } }],
      ["content_block_start", { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } }],
      ["ping", { type: "ping" }],
    ];
    if (this.anthropicStreamError) {
      this.anthropicStreamError = false;
      events.push(["error", { type: "error", error: { type: "overloaded_error", message: "busy" } }]);
      return sse(events);
    }
    for (const text of ["Hello", " there"]) {
      events.push(["content_block_delta", { type: "content_block_delta", index: 0, delta: { type: "text_delta", text } }]);
    }
    events.push(
      ["content_block_stop", { type: "content_block_stop", index: 0 }],
      ["message_delta", { type: "message_delta", delta: { stop_reason: "end_turn", stop_sequence: null }, usage: { output_tokens: endUsage.output_tokens, server_tool_use: endUsage.server_tool_use } }],
      ["message_stop", { type: "message_stop" }],
    );
    return sse(events);
  }
}

// --- the gate in front of costmon -----------------------------------------------------------------

/**
 * An HTTP proxy in front of costmon. `stop()` closes it (connections refused, as a stopped
 * costmon), `start()` opens it again on the same port; `hold()` keeps requests waiting (a hung
 * costmon) until `release()`; `plan.fail` answers that many requests itself (`failStatus`,
 * `failHeaders`); `plan.loseAnswer` lets costmon store that many batches and answers 503 instead.
 */
export class Gate {
  passages = []; // { path, body, answered, at }
  arrivals = 0;
  plan = { fail: 0, failStatus: 503, failHeaders: {}, loseAnswer: 0 };
  held = false;
  waiting = [];
  sockets = new Set();

  async start() {
    this.server = http.createServer((request, response) => this.handle(request, response));
    this.server.on("connection", (socket) => {
      this.sockets.add(socket);
      socket.on("close", () => this.sockets.delete(socket));
    });
    this.port = await listen(this.server, this.port ?? 0);
    this.url = `http://127.0.0.1:${this.port}`;
    return this;
  }

  async stop() {
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  hold() {
    this.held = true;
  }

  release() {
    this.held = false;
    for (const resume of this.waiting.splice(0)) resume();
  }

  usageBatches() {
    return this.passages.filter((p) => p.path === "/api/v1/usage/").map((p) => p.body.map((e) => e.event_id));
  }

  async handle(request, response) {
    const raw = await readBody(request);
    this.arrivals += 1;
    if (this.held) await new Promise((resume) => this.waiting.push(resume));
    let status;
    let reply;
    let headers = { "Content-Type": "application/json" };
    if (this.plan.fail > 0) {
      this.plan.fail -= 1;
      status = this.plan.failStatus;
      reply = JSON.stringify({ detail: "maintenance" });
      headers = { ...headers, ...this.plan.failHeaders };
    } else {
      ({ status, reply, headers } = await this.forward(request, raw));
      if (this.plan.loseAnswer > 0) {
        this.plan.loseAnswer -= 1;
        status = 503;
        reply = JSON.stringify({ detail: "upstream reply lost" });
      }
    }
    this.passages.push({ path: request.url, body: JSON.parse(raw.toString() || "null"), answered: status, at: performance.now() });
    if (response.destroyed) return;
    response.writeHead(status, headers);
    response.end(reply);
  }

  async forward(request, raw) {
    const upstream = await fetch(env.url + request.url, {
      method: request.method,
      headers: { Authorization: request.headers.authorization ?? "", "Content-Type": "application/json", Accept: "application/json" },
      body: raw,
    });
    const headers = { "Content-Type": upstream.headers.get("content-type") ?? "application/json" };
    for (const [name, value] of upstream.headers) {
      if (name.startsWith("retry-") || name.startsWith("x-")) headers[name] = value;
    }
    return { status: upstream.status, reply: await upstream.text(), headers };
  }
}

/** Servers started for a test file, stopped after it. */
export async function started(server) {
  await server.start();
  after(() => server.stop?.().catch(() => {}));
  return server;
}
