// Getting events to costmon without ever holding up or breaking the application: batches sent by
// timers, retries under the same event ids, a bounded queue, and a flush when the process runs
// out of work. costmon is reached through a gate the tests can stop, hold or fail.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import OpenAI from "openai";

import { FakeProvider, Gate, HELLO, env, events, freePort, makeCostmon, median, metrics, nanos, sleep, started, uniqueId } from "./helpers.mjs";

const provider = await started(new FakeProvider());
const gate = await started(new Gate());
const DIST = fileURLToPath(new URL("../dist/esm/index.js", import.meta.url));

function sdk() {
  return new OpenAI({ baseURL: `${provider.url}/v1`, apiKey: "sk-test", maxRetries: 0 });
}

/** Report n calls of 450 input and 180 output tokens to claude-haiku-4-5: $0.00135 each. */
function haiku(costmon, n = 1, fields = {}) {
  return Array.from({ length: n }, () =>
    costmon.track({ provider: "anthropic", model: "claude-haiku-4-5", inputTokens: 450, outputTokens: 180, ...fields }),
  );
}

async function storedIds(sessionId) {
  return (await events({ session_id: sessionId })).map((e) => e.event_id).sort();
}

async function until(condition, timeoutMs = 5000) {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${condition}`);
    await sleep(5);
  }
}

/** Time `n` calls one after another; their latencies in ms. */
async function timed(n, call) {
  const latencies = [];
  for (let i = 0; i < n; i += 1) {
    const started = performance.now();
    await call();
    latencies.push(performance.now() - started);
  }
  return latencies;
}

/** Run a Node script (an ES module) in a child process; resolves with its output and duration. */
function runScript(source, timeoutMs = 20_000) {
  return new Promise((resolve, reject) => {
    const startedAt = performance.now();
    const child = spawn(process.execPath, ["--input-type=module", "-e", source], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    const killer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(killer);
      resolve({ code, stdout: stdout.trim(), stderr, ms: performance.now() - startedAt });
    });
  });
}

describe("delivery", () => {
  test("events are sent in batches of at most batchSize", async () => {
    const sessionId = uniqueId("batches");
    const costmon = makeCostmon({ url: gate.url, sessionId, batchSize: 4, flushInterval: 60_000 });
    const before = gate.usageBatches().length;

    const ids = haiku(costmon, 10);

    assert.ok(await costmon.flush(10_000));
    assert.deepEqual(gate.usageBatches().slice(before).map((batch) => batch.length), [4, 4, 2]);
    assert.deepEqual(await storedIds(sessionId), ids.sort());
    assert.equal(costmon.stats().sent, 10);
  });

  test("a partial batch waits flushInterval, then goes by itself", async () => {
    const sessionId = uniqueId("interval");
    const costmon = makeCostmon({ url: gate.url, sessionId, flushInterval: 300 });
    const before = gate.usageBatches().length;

    const [id] = haiku(costmon);
    await sleep(100);
    const early = gate.usageBatches().length - before;
    await until(() => costmon.stats().sent === 1);

    assert.equal(early, 0);
    assert.deepEqual(gate.usageBatches().slice(before), [[id]]);
  });

  test("with costmon stopped, wrapped calls are as fast and nothing is thrown; the events arrive after, once", async () => {
    const endUser = uniqueId("outage");
    const costmon = makeCostmon({ url: gate.url, endUser });
    const client = costmon.wrap(sdk());
    const call = () => client.chat.completions.create({ model: "gpt-4o-mini", messages: HELLO });
    await timed(5, call); // warm up
    assert.ok(await costmon.flush(10_000));
    const up = await timed(20, call);
    assert.ok(await costmon.flush(10_000));

    await gate.stop();
    let down;
    try {
      down = await timed(20, call);
      await sleep(100);
      assert.equal(await costmon.flush(200), false); // nothing to talk to: it keeps the events and retries
      const stats = costmon.stats();
      assert.ok(stats.retries >= 1 && stats.queued + stats.inFlight === 20, JSON.stringify(stats));
      assert.match(stats.lastError, /costmon unreachable: NetworkError/);
    } finally {
      await gate.start(); // costmon is back, on the same address
    }

    assert.ok(await costmon.flush(10_000));
    // Generous: the calls queued their events and went on; they never waited for costmon.
    assert.ok(median(down) < median(up) * 3 + 20, `median ${median(down)} ms down, ${median(up)} ms up`);
    const { total } = await metrics({ end_user: endUser });
    assert.deepEqual([total.calls, nanos(total.cost_usd)], [45, 45n * 285_000n]); // 5 + 20 + 20, each once
    assert.equal(costmon.stats().duplicates, 0);
  });

  test("with costmon hanging, wrapped calls and track() do not wait for it", async () => {
    const sessionId = uniqueId("hung");
    const costmon = makeCostmon({ url: gate.url, sessionId, batchSize: 100, timeout: 30_000 });
    const plain = sdk();
    const client = costmon.wrap(sdk());
    const before = gate.arrivals;
    gate.hold(); // costmon accepts the connection and then says nothing
    let stats;
    let perTrack;
    let wrapped;
    let unwrapped;
    try {
      await client.chat.completions.create({ model: "gpt-4o-mini", messages: HELLO });
      await costmon.flush(0);
      await until(() => gate.arrivals > before); // the sender is now inside its POST, waiting
      unwrapped = await timed(20, () => plain.chat.completions.create({ model: "gpt-4o-mini", messages: HELLO }));
      wrapped = await timed(20, () => client.chat.completions.create({ model: "gpt-4o-mini", messages: HELLO }));
      const started = performance.now();
      for (let i = 0; i < 2000; i += 1) costmon.track({ provider: "openai", model: "gpt-4o-mini", inputTokens: 1 });
      perTrack = (performance.now() - started) / 2000;
      stats = costmon.stats();
    } finally {
      gate.release();
    }

    // The calls all returned while the sender was stuck; they only queued their events.
    assert.deepEqual([stats.inFlight, stats.queued, stats.sent], [1, 2020, 0]);
    assert.ok(median(wrapped) < median(unwrapped) * 3 + 20, `median ${median(wrapped)} ms wrapped, ${median(unwrapped)} ms plain`);
    assert.ok(perTrack < 0.5, `track() took ${perTrack} ms`); // building and queuing an event: microseconds
    assert.ok(await costmon.flush(30_000));
    assert.equal((await events({ session_id: sessionId })).length, 2021);
  });

  test("a lost answer is retried under the same ids and costmon counts it once", async () => {
    const endUser = uniqueId("lost");
    const costmon = makeCostmon({ url: gate.url, endUser });
    const before = gate.passages.length;
    gate.plan.loseAnswer = 1; // costmon stores the batch, but its 201 never reaches the client

    const ids = haiku(costmon, 3);

    assert.ok(await costmon.flush(10_000));
    const passages = gate.passages.slice(before);
    assert.deepEqual(passages.map((p) => p.answered), [503, 201]);
    assert.deepEqual(passages.map((p) => p.body.map((e) => e.event_id)), [ids, ids]);
    const stats = costmon.stats();
    assert.deepEqual([stats.sent, stats.duplicates, stats.retries], [3, 3, 1]);
    // Stored once, spent once: 3 x $0.00135.
    const { total } = await metrics({ end_user: endUser });
    assert.deepEqual([total.calls, total.cost_usd], [3, "0.00405"]);
  });

  test("a 503 is retried after the seconds its Retry-After asks for", async () => {
    const sessionId = uniqueId("retry-after");
    const costmon = makeCostmon({ url: gate.url, sessionId, retryDelay: 10, maxRetryDelay: 5000 });
    const before = gate.passages.length;
    gate.plan = { ...gate.plan, fail: 1, failStatus: 503, failHeaders: { "Retry-After": "1" } };

    const ids = haiku(costmon, 2);

    assert.ok(await costmon.flush(10_000));
    const [first, second] = gate.passages.slice(before);
    assert.deepEqual([first.answered, second.answered], [503, 201]);
    assert.ok(second.at - first.at >= 950, `retried after ${second.at - first.at} ms`);
    assert.deepEqual(await storedIds(sessionId), ids.sort());
    gate.plan.failHeaders = {};
  });

  test("429s are retried like other transient errors", async () => {
    const sessionId = uniqueId("429");
    const costmon = makeCostmon({ url: gate.url, sessionId });
    const before = gate.passages.length;
    gate.plan = { ...gate.plan, fail: 2, failStatus: 429 };

    const ids = haiku(costmon, 2);

    assert.ok(await costmon.flush(10_000));
    assert.deepEqual(gate.passages.slice(before).map((p) => p.answered), [429, 429, 201]);
    assert.deepEqual(await storedIds(sessionId), ids.sort());
    assert.equal(costmon.stats().retries, 2);
    gate.plan.failStatus = 503;
  });

  test("an event costmon refuses is dropped and the rest of its batch is stored", async () => {
    const sessionId = uniqueId("refused");
    const costmon = makeCostmon({ url: gate.url, sessionId, batchSize: 3, flushInterval: 60_000 });
    const before = gate.usageBatches().length;
    const [good] = haiku(costmon);
    const [bad] = haiku(costmon, 1, { occurredAt: new Date(Date.now() + 2 * 86_400_000) }); // in the future
    const [alsoGood] = haiku(costmon);

    assert.ok(await costmon.flush(10_000));
    // costmon refused the whole batch for one event; the client sent the two good ones again.
    assert.deepEqual(gate.usageBatches().slice(before), [[good, bad, alsoGood], [good, alsoGood]]);
    assert.deepEqual(await storedIds(sessionId), [good, alsoGood].sort());
    const stats = costmon.stats();
    assert.deepEqual([stats.sent, stats.rejected, stats.retries], [2, 1, 0]);
  });

  test("a wrong key drops the batch instead of retrying forever", async () => {
    const costmon = makeCostmon({ url: gate.url, apiKey: "cm_wrong_key" });
    const before = gate.passages.length;

    haiku(costmon, 2);

    assert.ok(await costmon.flush(10_000));
    assert.deepEqual(gate.passages.slice(before).map((p) => p.answered), [401]);
    const stats = costmon.stats();
    assert.deepEqual([stats.sent, stats.rejected, stats.retries, stats.lastError], [0, 2, 0, "costmon refused a batch (401)"]);
  });

  test("a full queue drops the oldest events and counts them", async () => {
    const sessionId = uniqueId("full");
    const costmon = makeCostmon({ url: gate.url, sessionId, batchSize: 1, maxQueue: 3 });
    const before = gate.arrivals;
    gate.hold();
    let first;
    let later;
    try {
      [first] = haiku(costmon);
      await until(() => gate.arrivals > before); // in flight, held at the gate
      later = haiku(costmon, 5); // room for 3: the 2 oldest of these go
      assert.equal(costmon.stats().dropped, 2);
    } finally {
      gate.release();
    }

    assert.ok(await costmon.flush(10_000));
    assert.deepEqual(await storedIds(sessionId), [first, ...later.slice(2)].sort());
  });

  test("shutdown() sends what is queued; events after it are dropped and counted", async () => {
    const sessionId = uniqueId("shutdown");
    const costmon = makeCostmon({ sessionId, flushInterval: 60_000 });
    const ids = haiku(costmon, 3);

    assert.equal(await costmon.shutdown(), true);
    haiku(costmon);

    assert.deepEqual(await storedIds(sessionId), ids.sort());
    assert.deepEqual([costmon.stats().sent, costmon.stats().dropped], [3, 1]);
  });

  test("queued events are sent when the process runs out of work, without any flush", async () => {
    const sessionId = uniqueId("exit");
    const done = await runScript(`
      import { Costmon } from ${JSON.stringify(DIST)};
      const costmon = new Costmon({ url: ${JSON.stringify(env.url)}, apiKey: ${JSON.stringify(env.key)}, flushInterval: 3_600_000, sessionId: ${JSON.stringify(sessionId)} });
      console.log(costmon.track({ provider: "openai", model: "gpt-4o-mini", inputTokens: 1000, outputTokens: 100 }));
      // no flush, no shutdown: the process's last turn of the event loop sends it
    `);

    assert.equal(done.code, 0, done.stderr);
    assert.ok(done.ms < 5000, `the process took ${done.ms} ms to exit`); // the hour-long timer did not keep it
    const [event] = await events({ session_id: sessionId });
    // 1,000 x 0.15 + 100 x 0.60 = 210 USD per Mtok.
    assert.deepEqual([event.event_id, nanos(event.cost_usd)], [done.stdout, 210_000n]);
  });

  test("a process exits within shutdownTimeout when costmon hangs or is down", async () => {
    const script = (url) => `
      import { Costmon } from ${JSON.stringify(DIST)};
      const costmon = new Costmon({ url: ${JSON.stringify(url)}, apiKey: "cm_test", shutdownTimeout: 500, timeout: 30_000 });
      costmon.track({ provider: "openai", model: "gpt-4o-mini", inputTokens: 1 });
    `;
    gate.hold();
    let hung;
    try {
      hung = await runScript(script(gate.url));
    } finally {
      gate.release();
    }
    const down = await runScript(script(`http://127.0.0.1:${await freePort()}`));

    for (const done of [hung, down]) {
      assert.equal(done.code, 0, done.stderr);
      assert.ok(done.ms < 3000, `the process took ${done.ms} ms to exit`);
      assert.match(done.stderr, /1 events not sent: costmon did not take them before the process exited/);
    }
  });
});
