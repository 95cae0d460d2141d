// check(): costmon's pre-flight answer in the API's shape, thrown as typed errors on request, and
// the client's own answer (allow or deny) when costmon cannot be asked. These tests use a tenant of
// their own (budgets, the emergency stop and a rate limit for one end user set up by the driver).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import OpenAI from "openai";

import {
  BudgetExceededError,
  CallDeniedError,
  Costmon,
  CostmonUnavailableError,
  EmergencyStopError,
  RateLimitedError,
} from "../dist/esm/index.js";
import { FakeProvider, Gate, HELLO, api, env, freePort, makeCostmon, nanos, started, uniqueId } from "./helpers.mjs";

const provider = await started(new FakeProvider());
const gate = await started(new Gate());

function checks(options = {}) {
  return makeCostmon({ apiKey: env.checkKey, ...options });
}

/** A hard budget on one end user of its own: the tests never see each other's spend. */
async function hardBudget(endUser, limit, extra = {}) {
  const { status, body } = await api("/api/v1/budgets/", env.checkAdminKey, {
    method: "POST",
    body: JSON.stringify({
      name: `Cap for ${endUser}`,
      scope: "end_user",
      scope_value: endUser,
      limit_usd: limit,
      enforcement: "hard",
      ...extra,
    }),
  });
  assert.equal(status, 201, JSON.stringify(body));
  return body;
}

describe("check", () => {
  test("a call within budget is allowed with the budget's figures", async () => {
    const endUser = uniqueId("within");
    const budget = await hardBudget(endUser, "0.01");
    const costmon = checks();
    costmon.track({ provider: "anthropic", model: "claude-haiku-4-5", inputTokens: 450, outputTokens: 180, endUser });
    assert.ok(await costmon.flush(10_000));

    const result = await costmon.check({
      endUser,
      provider: "anthropic",
      model: "claude-haiku-4-5",
      estimatedInputTokens: 450,
      estimatedOutputTokens: 180,
    });

    assert.deepEqual([result.allowed, result.unreachable, result.reasons], [true, false, []]);
    assert.equal(nanos(result.estimated_cost_usd), 1_350_000n); // 450 x 1 + 180 x 5 USD per Mtok
    assert.equal(result.source, "redis");
    const [status] = result.budgets;
    assert.deepEqual(
      [status.id, status.name, status.scope, status.period, status.status, status.enforcement],
      [budget.id, `Cap for ${endUser}`, "end_user", "month", "ok", "hard"],
    );
    assert.deepEqual(
      [nanos(status.limit_usd), nanos(status.used_usd), nanos(status.remaining_usd), status.percent],
      [10_000_000n, 1_350_000n, 8_650_000n, 13.5],
    );
    assert.ok(Date.parse(status.resets_at) > Date.now());
  });

  test("a call over a hard budget is denied, and throws when asked", async () => {
    const endUser = uniqueId("over");
    await hardBudget(endUser, "0.001", { suggested_model: "claude-haiku-4-5" });
    const costmon = checks();
    const first = await costmon.check({ endUser, estimatedCostUsd: "0.002" });
    costmon.track({ provider: "anthropic", model: "claude-haiku-4-5", inputTokens: 450, outputTokens: 180, endUser });
    assert.ok(await costmon.flush(10_000));

    const denied = await costmon.check({ endUser, estimatedCostUsd: "0.002" });
    const error = await costmon.check({ endUser, estimatedCostUsd: "0.002", throwOnDeny: true }).catch((e) => e);

    // Before any spend: the estimate alone would pass the limit.
    assert.deepEqual([first.allowed, first.reasons, first.suggested_model], [false, ["budget_exceeded"], null]);
    // After $0.00135 was spent: past the limit, and past the warning, so a cheaper model is named.
    assert.deepEqual([denied.allowed, denied.reasons, denied.unreachable], [false, ["budget_exceeded"], false]);
    assert.equal(denied.suggested_model, "claude-haiku-4-5");
    assert.ok(error instanceof BudgetExceededError && error instanceof CallDeniedError);
    assert.match(error.message, new RegExp(`budget 'Cap for ${endUser}' \\(month\\): 0.00135 of 0.001 USD used`));
    assert.match(error.message, /\(suggested model: claude-haiku-4-5\)$/);
    assert.deepEqual(error.reasons, ["budget_exceeded"]);
  });

  test("the emergency stop throws its own error", async () => {
    const costmon = checks();
    try {
      const trip = await api("/api/v1/emergency-stop/", env.checkAdminKey, {
        method: "POST",
        body: JSON.stringify({ action: "trip", reason: "runaway agent", duration_minutes: 5 }),
      });
      assert.equal(trip.body.active, true, JSON.stringify(trip.body));
      const error = await costmon.check({ provider: "openai", model: "gpt-4o-mini", throwOnDeny: true }).catch((e) => e);
      assert.ok(error instanceof EmergencyStopError, String(error));
      assert.match(error.message, /runaway agent/);
      assert.deepEqual(error.result.reasons, ["emergency_stop"]);
    } finally {
      const lift = await api("/api/v1/emergency-stop/", env.checkAdminKey, {
        method: "POST",
        body: JSON.stringify({ action: "lift", reason: "test over" }),
      });
      assert.equal(lift.body.active, false, JSON.stringify(lift.body));
    }
    assert.ok((await costmon.check({})).allowed);
  });

  test("a rate-limited call throws with the seconds to wait", async () => {
    const costmon = checks();

    const first = await costmon.check({ endUser: env.rateLimitedUser });
    const error = await costmon.check({ endUser: env.rateLimitedUser, throwOnDeny: true }).catch((e) => e);

    assert.equal(first.allowed, true);
    assert.ok(error instanceof RateLimitedError, String(error));
    assert.deepEqual(error.result.reasons, ["rate_limited"]);
    assert.ok(error.retryAfter > 0 && error.retryAfter <= 60, String(error.retryAfter));
    assert.equal(error.result.retry_after, error.retryAfter);
  });

  test("a reservation is held, then settled by the wrapped call's event", async () => {
    const endUser = uniqueId("reserve");
    await hardBudget(endUser, "0.01");
    const costmon = checks();
    const client = costmon.wrap(new OpenAI({ baseURL: `${provider.url}/v1`, apiKey: "sk-test", maxRetries: 0 }));

    const held = await costmon.check({
      endUser,
      provider: "openai",
      model: "gpt-4o-mini",
      estimatedCostUsd: "0.001",
      reserve: true,
    });
    await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: HELLO,
      costmonEndUser: endUser,
      costmonReservationId: held.reservation_id,
    });

    assert.ok(held.reservation_id);
    assert.equal(nanos(held.budgets[0].reserved_usd), 1_000_000n);
    assert.ok(await costmon.flush(10_000));
    const [after] = (await costmon.check({ endUser })).budgets;
    // The call cost $0.000285 (see openai.test.mjs): that is spent, nothing is held any more.
    assert.deepEqual([nanos(after.used_usd), nanos(after.reserved_usd)], [285_000n, 0n]);
  });

  test("with costmon down the check allows by default, and says why", async () => {
    const costmon = checks({ url: `http://127.0.0.1:${await freePort()}` });

    const result = await costmon.check({ provider: "openai", model: "gpt-4o-mini", throwOnDeny: true });

    assert.deepEqual([result.allowed, result.unreachable, result.reasons], [true, true, []]);
    assert.equal(result.warnings[0].code, "costmon_unreachable");
    assert.match(result.warnings[0].message, /costmon unreachable: NetworkError/);
  });

  test("with costmon down a deny client refuses, and can throw", async () => {
    const costmon = checks({ url: `http://127.0.0.1:${await freePort()}`, onUnreachable: "deny" });

    const result = await costmon.check();
    const error = await costmon.check({ throwOnDeny: true }).catch((e) => e);

    assert.deepEqual([result.allowed, result.unreachable, result.reasons], [false, true, ["costmon_unreachable"]]);
    assert.ok(error instanceof CostmonUnavailableError);
    // The policy can also be chosen per call.
    assert.equal((await costmon.check({ onUnreachable: "allow" })).allowed, true);
  });

  test("a hanging costmon answers from the policy after the timeout, then at once for a while", async () => {
    const costmon = checks({ url: gate.url, checkTimeout: 200, onUnreachable: "deny", unreachableBackoff: 60_000 });
    gate.hold();
    const arrivals = gate.arrivals;
    try {
      let started = performance.now();
      const first = await costmon.check();
      const firstMs = performance.now() - started;
      started = performance.now();
      const second = await costmon.check();
      const secondMs = performance.now() - started;

      assert.deepEqual([first.allowed, first.unreachable, second.allowed, second.unreachable], [false, true, false, true]);
      assert.match(first.warnings[0].message, /TimeoutError/);
      assert.ok(firstMs >= 190 && firstMs < 1000, `first check took ${firstMs} ms`);
      assert.ok(secondMs < 20, `second check took ${secondMs} ms`);
      assert.equal(gate.arrivals - arrivals, 1); // the second check did not ask costmon again
    } finally {
      gate.release();
    }
  });

  test("after a stopped costmon comes back, checks reach it once the back-off is over", async () => {
    const costmon = checks({ url: gate.url, unreachableBackoff: 300 });
    await gate.stop();
    try {
      assert.equal((await costmon.check()).unreachable, true);
    } finally {
      await gate.start();
    }

    assert.equal((await costmon.check()).unreachable, true); // still backing off: not asked
    await new Promise((resolve) => setTimeout(resolve, 350));
    assert.equal((await costmon.check()).unreachable, false);
  });

  test("an error answer from costmon counts as unreachable, without a back-off", async () => {
    const costmon = checks({ url: gate.url });
    gate.plan.fail = 1;

    const result = await costmon.check();

    assert.deepEqual([result.allowed, result.unreachable], [true, true]);
    assert.equal(result.warnings[0].message, "costmon answered 503 to the check");
    assert.equal((await costmon.check()).unreachable, false); // the next one reaches costmon
  });

  test("a fractional number as a cost is refused before anything is sent", async () => {
    const costmon = new Costmon({ url: env.url, apiKey: env.checkKey, logger: null });

    await assert.rejects(costmon.check({ estimatedCostUsd: 0.1 }), TypeError);
    assert.throws(() => costmon.track({ provider: "openai", model: "gpt-4o", costUsd: 0.1 }), TypeError);
    assert.equal(costmon.stats().queued, 0);
    await costmon.shutdown(100);
  });
});
