// The package as npm ships it: `npm pack`, installed into a project of its own, imported from an
// ES module and from CommonJS (each reports an event to the real costmon), and type-checked from
// both kinds of TypeScript module.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import { env, events, nanos, uniqueId } from "./helpers.mjs";

const PACKAGE = fileURLToPath(new URL("..", import.meta.url));
const npm = process.platform === "win32" ? "npm.cmd" : "npm";
const work = mkdtempSync(join(tmpdir(), "costmon-pack-"));
after(() => rmSync(work, { recursive: true, force: true }));

function run(command, args, cwd) {
  return execFileSync(command, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 120_000 });
}

describe("package", () => {
  // dist/ was built by the driver (npm run build): pack it as it is.
  const [packed] = JSON.parse(run(npm, ["pack", "--json", "--ignore-scripts", "--pack-destination", work], PACKAGE));
  const project = join(work, "app");

  test("npm pack ships the two builds, their types and the README, and nothing else", () => {
    const files = packed.files.map((f) => f.path).sort();
    assert.ok(files.includes("dist/esm/index.js") && files.includes("dist/esm/index.d.ts"));
    assert.ok(files.includes("dist/cjs/index.js") && files.includes("dist/cjs/index.d.ts"));
    assert.ok(files.includes("README.md") && files.includes("package.json"));
    assert.deepEqual(
      files.filter((f) => !f.startsWith("dist/") && !["README.md", "package.json"].includes(f)),
      [],
    );
    const manifest = JSON.parse(readFileSync(join(PACKAGE, "package.json"), "utf8"));
    assert.equal(manifest.dependencies, undefined); // nothing at run time but Node itself
  });

  test("installed in another project, it is imported from ESM and CommonJS, and both report", async () => {
    mkdirSync(project, { recursive: true });
    writeFileSync(join(project, "package.json"), JSON.stringify({ name: "app", private: true }));
    run(npm, ["install", "--offline", "--no-audit", "--no-fund", "--loglevel=error", join(work, packed.filename)], project);
    assert.deepEqual(readdirSync(join(project, "node_modules")).filter((n) => !n.startsWith(".")), ["costmon"]);

    const sessionId = uniqueId("pack");
    const options = JSON.stringify({ url: env.url, apiKey: env.key, sessionId, logger: null });
    const report = (kind) => `
      const costmon = new Costmon(${options});
      const id = costmon.track({ provider: "openai", model: "gpt-4o-mini", inputTokens: 1000, operation: "${kind}" });
      costmon.flush(10000).then((ok) => { console.log(JSON.stringify({ ok, id, version: VERSION,
        errors: new BudgetExceededError("x", {}) instanceof CallDeniedError })); });
    `;
    writeFileSync(join(project, "esm.mjs"), `import { Costmon, VERSION, BudgetExceededError, CallDeniedError } from "costmon";\n${report("esm")}`);
    writeFileSync(
      join(project, "cjs.cjs"),
      `const { Costmon, VERSION, BudgetExceededError, CallDeniedError } = require("costmon");\n${report("cjs")}`,
    );
    const esm = JSON.parse(run(process.execPath, ["esm.mjs"], project));
    const cjs = JSON.parse(run(process.execPath, ["cjs.cjs"], project));

    const version = JSON.parse(readFileSync(join(PACKAGE, "package.json"), "utf8")).version;
    for (const result of [esm, cjs]) assert.deepEqual([result.ok, result.version, result.errors], [true, version, true]);
    const stored = await events({ session_id: sessionId });
    // 1,000 input tokens of gpt-4o-mini at $0.15 per Mtok, once from each kind of module.
    assert.deepEqual(
      stored.map((e) => [e.event_id, e.operation, nanos(e.cost_usd)]).sort(),
      [[cjs.id, "cjs", 150_000n], [esm.id, "esm", 150_000n]].sort(),
    );
  });

  test("its types serve TypeScript ES modules and CommonJS modules alike", () => {
    const source = `
      const costmon = new Costmon({ url: "http://127.0.0.1:8000", apiKey: "cm_test" });
      export const id: string = costmon.track({ provider: "openai", model: "gpt-4o", inputTokens: 1 });
      export const pending: Promise<CheckResult> = costmon.check({ model: "gpt-4o", estimatedCostUsd: "0.01" });
    `;
    writeFileSync(join(project, "typed.mts"), `import { Costmon, type CheckResult } from "costmon";\n${source}`);
    writeFileSync(join(project, "typed.cts"), `import { Costmon, type CheckResult } from "costmon";\n${source}`);
    const require = createRequire(import.meta.url);
    const tsc = require.resolve("typescript/bin/tsc");
    const types = join(PACKAGE, "node_modules", "@types");
    run(
      process.execPath,
      [tsc, "--noEmit", "--strict", "--module", "nodenext", "--moduleResolution", "nodenext", "--typeRoots", types, "--types", "node", "typed.mts", "typed.cts"],
      project,
    );
  });
});
