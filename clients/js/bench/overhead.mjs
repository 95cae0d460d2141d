// What tracking adds to each call, measured in process: the real `openai` SDK answered by an
// in-memory fetch (no network), once unwrapped and once wrapped, alternately, with costmon's own
// requests answered in memory too. Prints the median of each kind of call in microseconds (the
// order of the kinds shuffled every round). A turn of the event loop between two calls lets the
// background work of sending the events in batches run, as it would in an application.
//
//   node bench/overhead.mjs [calls]        (after npm run build)
import OpenAI from "openai";

import { Costmon } from "../dist/esm/index.js";

const COMPLETION = JSON.stringify({
  id: "chatcmpl-1",
  object: "chat.completion",
  created: 1_764_000_000,
  model: "gpt-4o-mini-2024-07-18",
  choices: [{ index: 0, message: { role: "assistant", content: "Hello there" }, finish_reason: "stop", logprobs: null }],
  usage: {
    prompt_tokens: 1200,
    completion_tokens: 300,
    total_tokens: 1500,
    prompt_tokens_details: { cached_tokens: 1000 },
    completion_tokens_details: { reasoning_tokens: 0 },
  },
});
const chunk = (extra) =>
  `data: ${JSON.stringify({ id: "c", object: "chat.completion.chunk", created: 1, model: "gpt-4o-mini-2024-07-18", ...extra })}\n\n`;
const STREAM =
  chunk({ choices: [{ index: 0, delta: { role: "assistant", content: "Hello" }, finish_reason: null }] }) +
  chunk({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }] }) +
  chunk({ choices: [], usage: { prompt_tokens: 2000, completion_tokens: 500, total_tokens: 2500 } }) +
  "data: [DONE]\n\n";

function provider(url, init) {
  const body = JSON.parse(init.body);
  return Promise.resolve(
    body.stream
      ? new Response(STREAM, { status: 200, headers: { "content-type": "text/event-stream" } })
      : new Response(COMPLETION, { status: 200, headers: { "content-type": "application/json" } }),
  );
}

function costmonServer(url, init) {
  const count = JSON.parse(init.body).length;
  const events = Array.from({ length: count }, () => ({ cost_usd: "0.000285", cost_source: "computed", duplicate: false }));
  return Promise.resolve(new Response(JSON.stringify({ events }), { status: 201 }));
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

export async function measure(calls = 5000) {
  const costmon = new Costmon({ url: "http://costmon.invalid", apiKey: "cm_bench", fetch: costmonServer, logger: null });
  const sdk = () => new OpenAI({ apiKey: "sk-bench", baseURL: "http://provider.invalid/v1", fetch: provider, maxRetries: 0 });
  const plain = sdk();
  const wrapped = costmon.wrap(sdk());
  const request = { model: "gpt-4o-mini", messages: [{ role: "user", content: "Hi" }] };
  const kinds = {
    plain: () => plain.chat.completions.create(request),
    wrapped: () => wrapped.chat.completions.create(request),
    plainStream: async () => {
      for await (const _ of await plain.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } }));
    },
    wrappedStream: async () => {
      for await (const _ of await wrapped.chat.completions.create({ ...request, stream: true }));
    },
  };
  const times = Object.fromEntries(Object.keys(kinds).map((k) => [k, []]));
  const order = Object.keys(kinds);
  const turn = () => new Promise((resolve) => setImmediate(resolve));
  for (let round = -500; round < calls; round += 1) {
    order.sort(() => Math.random() - 0.5);
    for (const kind of order) {
      const started = performance.now();
      await kinds[kind]();
      if (round >= 0) times[kind].push((performance.now() - started) * 1000);
      await turn();
    }
  }
  const tracks = [];
  for (let i = 0; i < calls; i += 1) {
    const started = performance.now();
    costmon.track({ provider: "openai", model: "gpt-4o-mini", inputTokens: 1200, outputTokens: 300 });
    tracks.push((performance.now() - started) * 1000);
    if (i % 100 === 99) await turn();
  }
  await costmon.shutdown(5000);
  const m = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)]));
  const round = (us) => Math.round(us * 10) / 10;
  return {
    calls,
    node: process.version,
    plain_us: round(m.plain),
    wrapped_us: round(m.wrapped),
    overhead_us: round(m.wrapped - m.plain),
    plain_stream_us: round(m.plainStream),
    wrapped_stream_us: round(m.wrappedStream),
    stream_overhead_us: round(m.wrappedStream - m.plainStream),
    track_us: round(median(tracks)),
    sent: costmon.stats().sent,
    dropped: costmon.stats().dropped,
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(JSON.stringify(await measure(Number(process.argv[2] ?? 5000))));
}
