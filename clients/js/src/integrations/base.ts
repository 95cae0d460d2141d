/**
 * What every SDK wrapper shares: patching a client's methods in place, one `Call` per tracked
 * request, and reading a stream's usage as the application consumes it.
 *
 * The SDKs' own helpers (`chat.completions.parse/stream/runTools`, `responses.parse/stream`,
 * `messages.parse/stream`) all make their request through the patched `create`, so each request
 * is tracked once, whichever way the application made it. Whatever happens while reading usage
 * is logged and swallowed; whatever the SDK throws reaches the application unchanged.
 */
import type { Attributes, EventFields, ServiceTier, TokenUsage } from "../events.js";
import { type Logger, say } from "../log.js";

/** The part of `Costmon` the wrappers use. */
export interface Recorder {
  readonly logger: Logger | null;
  attributesFor(
    wrapper: Attributes,
    options: { call?: Attributes; defaultOperation?: string; sdkEndUser?: string | undefined },
  ): Attributes;
  record(fields: EventFields): void;
}

/** What a response (or the stream so far) says: the model that answered, its usage and the
 * service tier that served it (costmon's name; none: standard). */
export interface Reading {
  model?: string | null;
  usage?: TokenUsage | null;
  serviceTier?: ServiceTier | null;
}

export interface StreamObserver {
  /** Read one item; true hides it from the application (an item only costmon asked for). */
  observe(item: unknown): boolean;
  reading(): Reading;
}

/** How to track one SDK method. */
export interface Route {
  operation: string;
  readResponse?(response: unknown): Reading;
  /** `hide`: what `prepareStream` returned. */
  observer?(hide: boolean): StreamObserver;
  /** Adjusts (a copy of) a streamed call's body; true when a usage-only item must be hidden. */
  prepareStream?(body: Record<string, unknown>): boolean;
  /** The end user the SDK's own parameters name (OpenAI's `user`, Anthropic's metadata). */
  endUser?(body: Record<string, unknown>): string | undefined;
}

/** Per-call options taken off the body (or the request options) before the SDK sees them. */
const CALL_KEYS = [
  "costmonEndUser",
  "costmonOperation",
  "costmonSessionId",
  "costmonTags",
  "costmonReservationId",
  "costmonEventId",
] as const;
type CallOptions = Partial<Record<(typeof CALL_KEYS)[number], unknown>>;

/** Who a wrapped client reports to, and as what. Replaced when the client is wrapped again. */
export interface Tracker {
  costmon: Recorder;
  provider: string;
  attributes: Attributes;
}

export interface WrapState {
  tracker: Tracker;
}

export const ORIGINAL = Symbol.for("costmon.original");

export type Json = Record<string, unknown>;

export function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** An attribute of an SDK object or a key of a plain object; undefined when absent. */
export function get(obj: unknown, name: string): unknown {
  return typeof obj === "object" && obj !== null ? (obj as Json)[name] : undefined;
}

export function count(value: unknown): number {
  return typeof value === "number" && Number.isInteger(value) && value > 0 ? value : 0;
}

export function modelOf(obj: unknown): string | undefined {
  const model = get(obj, "model");
  return typeof model === "string" && model ? model : undefined;
}

function text(value: unknown): string | undefined {
  return typeof value === "string" && value ? value : undefined;
}

/** One tracked SDK request: its event id and start time are fixed when it is made. */
export class Call {
  private done = false;
  private readonly t0 = performance.now();
  private readonly occurredAt = new Date();
  observer: StreamObserver | undefined;

  constructor(
    private readonly costmon: Recorder,
    private readonly provider: string,
    private readonly requestModel: string | undefined,
    private readonly attributes: Attributes,
    private readonly reservationId: string | undefined,
    private readonly eventId: string | undefined,
  ) {}

  /** Queue the event, once; never throws. */
  finish(reading: Reading | null | undefined, error: boolean): void {
    if (this.done) return;
    this.done = true;
    abandoned.unregister(this);
    this.costmon.record({
      provider: this.provider,
      model: reading?.model || this.requestModel || "unknown",
      usage: reading?.usage ?? null,
      attributes: this.attributes,
      eventId: this.eventId,
      occurredAt: this.occurredAt,
      latencyMs: performance.now() - this.t0,
      error,
      reservationId: this.reservationId,
      serviceTier: reading?.serviceTier,
    });
  }

  /** Read one stream item; true when the application should not see it. */
  observe(item: unknown): boolean {
    const observer = this.observer;
    if (observer === undefined) return false;
    try {
      return observer.observe(item);
    } catch (error) {
      say(this.costmon.logger, "error", `could not read a stream event: ${String(error)}`);
      this.observer = undefined;
      return false;
    }
  }

  reading(): Reading | undefined {
    try {
      return this.observer?.reading();
    } catch (error) {
      say(this.costmon.logger, "error", `could not read the usage of a stream: ${String(error)}`);
      return undefined;
    }
  }
}

// A stream the application dropped unread still cost what the provider generated: recorded
// when it is garbage-collected, with what was read of it.
const abandoned = new FinalizationRegistry<Call>((call) => call.finish(call.reading(), false));

interface Started {
  call: Call;
  body: unknown;
  options: unknown;
  streamed: boolean;
  hide: boolean;
}

function takeCallOptions(value: unknown): { rest: unknown; picked: CallOptions | undefined } {
  if (!isObject(value)) return { rest: value, picked: undefined };
  let picked: CallOptions | undefined;
  for (const key of CALL_KEYS) {
    if (key in value) (picked ??= {})[key] = value[key];
  }
  if (picked === undefined) return { rest: value, picked };
  const rest = { ...value };
  for (const key of CALL_KEYS) delete rest[key];
  return { rest, picked };
}

/** Take costmon's options off the call and open a Call (the clock starts here). */
function start(tracker: Tracker, route: Route, rawBody: unknown, rawOptions: unknown): Started {
  const fromBody = takeCallOptions(rawBody);
  const fromOptions = takeCallOptions(rawOptions);
  const picked: CallOptions = { ...fromOptions.picked, ...fromBody.picked };
  let body = fromBody.rest;
  let streamed = false;
  let hide = false;
  if (isObject(body)) {
    streamed = body.stream === true;
    if (streamed && route.prepareStream) {
      if (body === rawBody) body = { ...body }; // never change the application's own object
      hide = route.prepareStream(body as Json);
    }
  }
  const costmon = tracker.costmon;
  const tags = picked.costmonTags;
  const attributes = costmon.attributesFor(tracker.attributes, {
    defaultOperation: route.operation,
    sdkEndUser: isObject(body) && route.endUser ? route.endUser(body) : undefined,
    call: {
      endUser: text(picked.costmonEndUser),
      operation: text(picked.costmonOperation),
      sessionId: text(picked.costmonSessionId),
      tags: isObject(tags) ? (tags as Record<string, string>) : undefined,
    },
  });
  const call = new Call(
    costmon,
    tracker.provider,
    modelOf(body),
    attributes,
    text(picked.costmonReservationId),
    text(picked.costmonEventId),
  );
  return { call, body, options: fromOptions.rest, streamed, hide };
}

interface SdkPromise {
  parseResponse: (...args: unknown[]) => Promise<unknown>;
  responsePromise: Promise<unknown>;
}

function isSdkPromise(value: unknown): value is SdkPromise {
  return (
    isObject(value) &&
    typeof value.parseResponse === "function" &&
    typeof (value.responsePromise as Promise<unknown> | undefined)?.then === "function"
  );
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return isObject(value) && typeof value.then === "function";
}

/** Replace `owner[name]` (a method of an SDK resource) with one that tracks each call. */
export function patchMethod(owner: unknown, name: string, route: Route, state: WrapState): void {
  if (!isObject(owner)) return;
  const current = owner[name];
  if (typeof current !== "function") return;
  const original = ((current as unknown as Record<symbol, unknown>)[ORIGINAL] as Method | undefined) ?? (current as Method);
  const tracked = function (this: unknown, body?: unknown, options?: unknown, ...more: unknown[]) {
    return trackCall(state.tracker, route, original, this ?? owner, body, options, more);
  };
  Object.defineProperty(tracked, "name", { value: name });
  Object.defineProperty(tracked, ORIGINAL, { value: original });
  Object.defineProperty(owner, name, { value: tracked, writable: true, configurable: true, enumerable: false });
}

type Method = (this: unknown, ...args: unknown[]) => unknown;

function trackCall(
  tracker: Tracker,
  route: Route,
  original: Method,
  self: unknown,
  rawBody: unknown,
  rawOptions: unknown,
  more: unknown[],
): unknown {
  let started: Started | undefined;
  try {
    started = start(tracker, route, rawBody, rawOptions);
  } catch (error) {
    say(tracker.costmon.logger, "error", `could not read the call's parameters: ${String(error)}`);
  }
  const body = started ? started.body : rawBody;
  const options = started ? started.options : rawOptions;
  const args = options === undefined && more.length === 0 ? [body] : [body, options, ...more];
  let result: unknown;
  try {
    result = original.apply(self, args);
  } catch (error) {
    started?.call.finish(null, true);
    throw error;
  }
  if (started !== undefined) {
    try {
      follow(result, started, route, tracker.costmon.logger);
    } catch (error) {
      say(tracker.costmon.logger, "error", `could not follow a call: ${String(error)}`);
    }
  }
  return result;
}

/** Record the call when its result is read, without changing what the application gets. */
function follow(result: unknown, started: Started, route: Route, logger: Logger | null): void {
  const { call } = started;
  const handle = (value: unknown) => {
    try {
      if (started.streamed && route.observer && isStream(value)) {
        call.observer = route.observer(started.hide);
        instrumentStream(value, call);
      } else {
        call.finish(read(route, value, logger), false);
      }
    } catch (error) {
      say(logger, "error", `could not read the usage of a response: ${String(error)}`);
      call.finish(null, false);
    }
  };
  if (isSdkPromise(result)) {
    // The SDK's APIPromise parses the body only when the application asks for it (await,
    // .withResponse()); hooking its parser keeps it so (`.asResponse()` still gets an unread body).
    const parse = result.parseResponse;
    result.parseResponse = async function (this: unknown, ...args: unknown[]) {
      let value: unknown;
      try {
        value = await parse.apply(this, args);
      } catch (error) {
        call.finish(null, true);
        throw error;
      }
      handle(value);
      return value;
    };
    result.responsePromise.then(undefined, () => call.finish(null, true));
  } else if (isThenable(result)) {
    result.then(handle, () => call.finish(null, true));
  } else {
    handle(result);
  }
}

function read(route: Route, value: unknown, logger: Logger | null): Reading | null {
  if (!route.readResponse) return null;
  try {
    return route.readResponse(value);
  } catch (error) {
    say(logger, "error", `could not read the usage of a response: ${String(error)}`);
    return null;
  }
}

function isStream(value: unknown): value is Json {
  return isObject(value) && typeof (value as Partial<AsyncIterable<unknown>>)[Symbol.asyncIterator] === "function";
}

/** Observe an SDK Stream's items as the application iterates it (also through tee() and
 * toReadableStream(), which read the same iterator). */
function instrumentStream(stream: Json, call: Call): void {
  const key: string | symbol = typeof stream.iterator === "function" ? "iterator" : Symbol.asyncIterator;
  const inner = (stream as Record<string | symbol, unknown>)[key] as (this: unknown) => AsyncIterator<unknown>;
  Object.defineProperty(stream, key, {
    value: function (this: unknown) {
      return observed(inner.call(this), call);
    },
    writable: true,
    configurable: true,
    enumerable: false,
  });
  abandoned.register(stream, call, call);
}

async function* observed(inner: AsyncIterator<unknown>, call: Call): AsyncGenerator<unknown> {
  let failed = false;
  try {
    for await (const item of { [Symbol.asyncIterator]: () => inner }) {
      if (!call.observe(item)) yield item;
    }
  } catch (error) {
    failed = true;
    throw error;
  } finally {
    call.finish(call.reading(), failed);
  }
}
