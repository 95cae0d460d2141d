// The tracked call's own cost, measured in process (bench/overhead.mjs): generous bounds, so a slow
// shared machine passes, and the figures in the output (`pytest -s tests/client_js` shows them).
import assert from "node:assert/strict";
import { test } from "node:test";

import { measure } from "../bench/overhead.mjs";

test("tracking adds well under a millisecond to a call, and track() a few microseconds", async (t) => {
  const result = await measure(2000);
  t.diagnostic(`overhead ${JSON.stringify(result)}`);

  assert.ok(result.overhead_us < 1000, JSON.stringify(result));
  assert.ok(result.stream_overhead_us < 1000, JSON.stringify(result));
  assert.ok(result.track_us < 100, JSON.stringify(result));
  // Every tracked call reached the (in-memory) costmon: 2,500 x 2 wrapped calls and 2,000 tracks.
  assert.deepEqual([result.sent, result.dropped], [2 * 2500 + 2000, 0]);
});
