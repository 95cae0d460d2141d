// Tenancy through the client: what acme's key reports is acme's alone, and the other way round.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { env, events, makeCostmon, metrics, uniqueId } from "./helpers.mjs";

describe("outsider", () => {
  test("an outsider sees none of the events acme's client reported, and acme none of the outsider's", async () => {
    const sessionId = uniqueId("tenancy");
    const acme = makeCostmon({ sessionId, endUser: sessionId });
    const outsider = makeCostmon({ apiKey: env.outsiderKey, sessionId: `${sessionId}-outsider` });
    const ids = ["one", "two", "three"].map(() =>
      acme.track({ provider: "anthropic", model: "claude-haiku-4-5", inputTokens: 450, outputTokens: 180 }),
    );
    const theirs = outsider.track({ provider: "openai", model: "gpt-4o-mini", inputTokens: 1000 });

    assert.ok(await acme.flush(10_000));
    assert.ok(await outsider.flush(10_000));

    assert.deepEqual((await events({ session_id: sessionId })).map((e) => e.event_id).sort(), ids.sort());
    assert.deepEqual(await events({ session_id: sessionId }, env.outsiderKey), []);
    assert.deepEqual(await events({ end_user: sessionId }, env.outsiderKey), []);
    const seen = await metrics({ end_user: sessionId }, env.outsiderKey);
    assert.deepEqual([seen.total.calls, seen.total.cost_usd], [0, "0"]);
    const own = await metrics({ end_user: sessionId });
    assert.deepEqual([own.total.calls, own.total.cost_usd], [3, "0.00405"]);

    assert.deepEqual(await events({ session_id: `${sessionId}-outsider` }), []);
    assert.deepEqual(
      (await events({ session_id: `${sessionId}-outsider` }, env.outsiderKey)).map((e) => e.event_id),
      [theirs],
    );
  });
});
