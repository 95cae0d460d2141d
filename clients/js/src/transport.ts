/**
 * The one HTTP choke point: JSON POSTs to costmon with Node's own `fetch` (which keeps
 * connections alive), each bounded by a timeout and abortable by the sender.
 */
import { ConfigurationError } from "./errors.js";
import { VERSION } from "./version.js";

export const USER_AGENT = `costmon-client-js/${VERSION}`;

export interface HttpResponse {
  status: number;
  headers: { get(name: string): string | null };
  body: string;
}

/** costmon did not answer: refused, reset, timed out, aborted. Worth retrying later. */
export class NoAnswer extends Error {
  readonly timedOut: boolean;

  constructor(message: string, timedOut: boolean) {
    super(message);
    this.name = timedOut ? "TimeoutError" : "NetworkError";
    this.timedOut = timedOut;
  }
}

export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

export class Transport {
  private readonly base: string;
  private readonly headers: Record<string, string>;
  private readonly fetch: FetchLike;

  constructor(url: string, apiKey: string, fetchImpl?: FetchLike) {
    let parsed: URL;
    try {
      parsed = new URL(url.trim());
    } catch {
      throw new ConfigurationError(`costmon url must be http(s)://host[:port][/prefix], not ${JSON.stringify(url)}`);
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
      throw new ConfigurationError(`costmon url must be http(s)://host[:port][/prefix], not ${JSON.stringify(url)}`);
    }
    this.base = `${parsed.origin}${parsed.pathname.replace(/\/+$/, "")}`;
    const fetchFn = fetchImpl ?? (globalThis.fetch as FetchLike | undefined);
    if (typeof fetchFn !== "function") {
      throw new ConfigurationError("costmon needs fetch (Node 18 or later), or pass one as `fetch`");
    }
    this.fetch = fetchFn;
    this.headers = {
      Authorization: `Bearer ${apiKey}`,
      "Content-Type": "application/json",
      Accept: "application/json",
      "User-Agent": USER_AGENT,
    };
  }

  /** POST `payload` as JSON; throw NoAnswer when no answer came back in `timeoutMs`. */
  async postJson(
    path: string,
    payload: unknown,
    timeoutMs: number,
    abort?: AbortController,
  ): Promise<HttpResponse> {
    const controller = abort ?? new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
    timer.unref?.();
    try {
      const response = await this.fetch(this.base + path, {
        method: "POST",
        headers: this.headers,
        body: JSON.stringify(payload),
        signal: controller.signal,
      });
      const body = await response.text();
      return { status: response.status, headers: response.headers, body };
    } catch (error) {
      if (timedOut) throw new NoAnswer(`no answer within ${timeoutMs} ms`, true);
      throw new NoAnswer(describeFetchError(error), false);
    } finally {
      clearTimeout(timer);
    }
  }
}

function describeFetchError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  if (error.name === "AbortError") return "request aborted";
  const cause = (error as { cause?: { code?: unknown; message?: unknown } }).cause;
  const detail = cause?.code ?? cause?.message;
  return detail ? `${error.message} (${String(detail)})` : error.message;
}

export function parseJson(body: string): unknown {
  try {
    return JSON.parse(body);
  } catch {
    return undefined;
  }
}

/** Seconds from a Retry-After header (a number of seconds), or null. */
export function retryAfterSeconds(headers: { get(name: string): string | null }): number | null {
  const value = headers.get("retry-after");
  if (value === null || value.trim() === "") return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(seconds, 0);
  const date = Date.parse(value); // the HTTP-date form
  return Number.isNaN(date) ? null : Math.max((date - Date.now()) / 1000, 0);
}
