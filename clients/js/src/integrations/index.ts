/** Wrapping SDK clients in place: pick the provider's routes from the client's shape. */
import type { Attributes } from "../events.js";
import { type Recorder, type Route, type Tracker, type WrapState, get, patchMethod } from "./base.js";
import * as anthropic from "./anthropic.js";
import * as openai from "./openai.js";

const STATE = Symbol.for("costmon.wrapped");

interface Integration {
  providerFor(client: object): string;
  ROUTES: [string[], Route][];
}

function integrationFor(client: object): Integration | undefined {
  if (typeof get(get(get(client, "chat"), "completions"), "create") === "function") return openai;
  if (typeof get(get(client, "messages"), "create") === "function") return anthropic;
  return undefined;
}

/**
 * Make `client` (an `openai` or `@anthropic-ai/sdk` client) report each call's usage and return
 * it: the same object, so it stays an instance of its class. Wrapping it again replaces the
 * settings; a call is never counted twice.
 */
export function wrapClient<T extends object>(
  costmon: Recorder,
  client: T,
  options: { provider?: string; attributes: Attributes },
): T {
  const integration = typeof client === "object" && client !== null ? integrationFor(client) : undefined;
  if (integration === undefined) {
    throw new TypeError(
      "costmon can wrap clients of the openai and @anthropic-ai/sdk packages; " +
        "report other calls with costmon.track()",
    );
  }
  const tracker: Tracker = {
    costmon,
    provider: options.provider ?? integration.providerFor(client),
    attributes: options.attributes,
  };
  attach(client, integration, tracker);
  return client;
}

function attach(client: object, integration: Integration, tracker: Tracker): void {
  const existing = (client as Record<symbol, WrapState | undefined>)[STATE];
  if (existing !== undefined) {
    existing.tracker = tracker;
    return;
  }
  const state: WrapState = { tracker };
  Object.defineProperty(client, STATE, { value: state, configurable: true });
  for (const [path, route] of integration.ROUTES) {
    let owner: unknown = client;
    for (const name of path.slice(0, -1)) owner = get(owner, name);
    patchMethod(owner, path[path.length - 1]!, route, state);
  }
  // `withOptions()` makes a new client with new resources: it reports to the same place.
  const withOptions = get(client, "withOptions");
  if (typeof withOptions === "function") {
    Object.defineProperty(client, "withOptions", {
      value: function (this: unknown, ...args: unknown[]) {
        const copy = withOptions.apply(this ?? client, args) as object;
        if (typeof copy === "object" && copy !== null) attach(copy, integration, { ...state.tracker });
        return copy;
      },
      writable: true,
      configurable: true,
      enumerable: false,
    });
  }
}
