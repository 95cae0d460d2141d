/**
 * Getting events to costmon without ever holding up the application: a bounded in-memory queue,
 * sent in batches by timers that do not keep the process alive, one batch in flight at a time,
 * retried with backoff under the same event ids until costmon has it.
 */
import type { WireEvent } from "./events.js";
import { type Logger, say } from "./log.js";
import { type HttpResponse, NoAnswer, type Transport, parseJson, retryAfterSeconds } from "./transport.js";

export const USAGE_PATH = "/api/v1/usage/";
export const MAX_BATCH_SIZE = 1000; // costmon takes up to 5,000 by default; smaller requests fail less
const RETRY_STATUSES = new Set([408, 425, 429, 500, 502, 503, 504]);
const DROP_WARNING_EVERY_MS = 60_000;

/** Counts since the client started; `queued` and `inFlight` are the present state. */
export interface SenderStats {
  queued: number;
  inFlight: number;
  /** accepted by costmon (its duplicates included) */
  sent: number;
  /** accepted, but costmon already had the event id: counted once */
  duplicates: number;
  /** refused by costmon (4xx), logged and not sent again */
  rejected: number;
  /** never sent: the queue was full, or the client shut down before costmon took them */
  dropped: number;
  /** failed attempts that were tried again */
  retries: number;
  lastError: string | null;
}

export interface SenderOptions {
  batchSize: number;
  flushInterval: number;
  maxQueue: number;
  timeout: number;
  retryDelay: number;
  maxRetryDelay: number;
  shutdownTimeout: number;
}

/** A FIFO with O(1) shift: an array and the index of its head. */
class Fifo<T> {
  private items: (T | undefined)[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  shift(): void {
    this.items[this.head] = undefined;
    this.head += 1;
    this.compact();
  }

  take(n: number): T[] {
    const taken = this.items.slice(this.head, this.head + n) as T[];
    this.items.fill(undefined, this.head, this.head + n);
    this.head += taken.length;
    this.compact();
    return taken;
  }

  clear(): number {
    const size = this.length;
    this.items = [];
    this.head = 0;
    return size;
  }

  private compact(): void {
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }
}

export class Sender {
  readonly shutdownTimeout: number;
  private readonly queue = new Fifo<WireEvent>();
  private inFlight = 0;
  private running = false;
  private due = false; // the interval has passed: send even a partial batch
  private timer: ReturnType<typeof setTimeout> | undefined;
  private flushing = 0;
  private closing = false;
  private closeDeadline = 0;
  private request: AbortController | undefined; // the POST in flight
  private wakeBackoff: (() => void) | undefined;
  private backoffHinted = false; // the wait honours costmon's Retry-After: flush() keeps it
  private readonly idleWaiters = new Set<() => void>();
  private pumpDone: Promise<void> = Promise.resolve();
  private sent = 0;
  private duplicates = 0;
  private rejected = 0;
  private dropped = 0;
  private retries = 0;
  private lastError: string | null = null;
  private lastDropWarning = -Infinity;
  private failing = false;
  private exitFlushFailed = false;

  constructor(
    private readonly transport: Transport,
    private readonly options: SenderOptions,
    private readonly logger: Logger | null,
  ) {
    const { batchSize, maxQueue } = options;
    if (!(Number.isInteger(batchSize) && batchSize >= 1 && batchSize <= MAX_BATCH_SIZE)) {
      throw new RangeError(`batchSize must be a whole number from 1 to ${MAX_BATCH_SIZE}`);
    }
    if (!(Number.isInteger(maxQueue) && maxQueue >= 1)) {
      throw new RangeError("maxQueue must be a whole number, at least 1");
    }
    this.shutdownTimeout = options.shutdownTimeout;
    watch(this);
  }

  // --- the application's side ----------------------------------------------------------------

  enqueue(event: WireEvent): void {
    if (this.closing) {
      this.countDrop("the client is shut down: usage reported after shutdown() is dropped");
      return;
    }
    if (this.queue.length >= this.options.maxQueue) {
      this.queue.shift(); // the oldest goes: the newest matter most to budgets
      this.countDrop(
        `the queue is full (${this.options.maxQueue} events; costmon slow or down?): dropping the oldest`,
      );
    }
    this.queue.push(event);
    if (this.running) return; // the running pump takes it
    if (this.queue.length >= this.options.batchSize) {
      // A full batch goes at once, but not inside the application's call.
      this.clearTimer();
      this.timer = unref(setTimeout(() => this.onTimer(false), 0));
    } else if (this.timer === undefined) {
      this.timer = unref(setTimeout(() => this.onTimer(true), this.options.flushInterval));
    }
  }

  /** Send everything queued now; true when nothing is left queued or in flight in time. */
  async flush(timeoutMs: number, abortOnTimeout = false): Promise<boolean> {
    if (this.isIdle()) return true;
    this.flushing += 1;
    try {
      if (!this.backoffHinted) this.wakeBackoff?.();
      this.startPump();
      const done = await this.waitIdle(timeoutMs);
      if (!done && abortOnTimeout) this.request?.abort();
      return done;
    } finally {
      this.flushing -= 1;
    }
  }

  /** Send what is queued (for at most `timeoutMs`), then stop; later events are dropped.
   * True when nothing was left unsent. */
  async shutdown(timeoutMs: number): Promise<boolean> {
    const droppedBefore = this.dropped;
    if (!this.closing) {
      this.closing = true;
      this.closeDeadline = Date.now() + Math.max(timeoutMs, 0);
    }
    this.wakeBackoff?.();
    this.startPump();
    let done = await this.waitIdle(Math.max(this.closeDeadline - Date.now(), 0));
    if (!done) {
      this.request?.abort();
      this.wakeBackoff?.();
      this.dropQueue("the client shut down before they could be sent");
      await Promise.race([this.pumpDone, delay(100)]);
      done = false;
    }
    this.clearTimer();
    return done && this.dropped === droppedBefore;
  }

  stats(): SenderStats {
    return {
      queued: this.queue.length,
      inFlight: this.inFlight,
      sent: this.sent,
      duplicates: this.duplicates,
      rejected: this.rejected,
      dropped: this.dropped,
      retries: this.retries,
      lastError: this.lastError,
    };
  }

  /** Node's event loop has nothing left to do: send what is queued before the process exits. */
  beforeExit(): void {
    if (this.isIdle()) return;
    if (this.exitFlushFailed) {
      // Already tried once, for shutdownTimeout: let the process exit.
      const left = this.queue.length + this.inFlight;
      say(this.logger, "warn", `${left} events not sent: costmon did not take them before the process exited`);
      this.exitFlushFailed = false;
      return;
    }
    void this.flush(this.shutdownTimeout, true).then((ok) => {
      this.exitFlushFailed = !ok;
    });
  }

  private isIdle(): boolean {
    return this.queue.length === 0 && this.inFlight === 0;
  }

  private countDrop(why: string): void {
    this.dropped += 1;
    const now = Date.now();
    if (now - this.lastDropWarning >= DROP_WARNING_EVERY_MS) {
      this.lastDropWarning = now;
      say(this.logger, "warn", `${why}; ${this.dropped} events dropped so far`);
    }
  }

  private dropQueue(why: string): void {
    const count = this.queue.clear();
    if (count) {
      this.dropped += count;
      say(this.logger, "warn", `${count} events dropped: ${why}`);
    }
    this.notifyIdle();
  }

  private clearTimer(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }

  private onTimer(intervalPassed: boolean): void {
    this.timer = undefined;
    if (intervalPassed) this.due = true;
    this.startPump();
  }

  /** Resolves true once nothing is queued or in flight, false after `timeoutMs`. This timer keeps
   * the process alive: whoever awaits a flush wants it to finish. */
  private waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.isIdle()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const check = () => {
        if (this.isIdle()) finish(true);
      };
      const finish = (value: boolean) => {
        clearTimeout(timer);
        this.idleWaiters.delete(check);
        resolve(value);
      };
      const timer = setTimeout(() => finish(this.isIdle()), Math.max(timeoutMs, 0));
      this.idleWaiters.add(check);
    });
  }

  private notifyIdle(): void {
    if (!this.isIdle()) return;
    for (const check of [...this.idleWaiters]) check();
  }

  // --- the background side ---------------------------------------------------------------------

  private startPump(): void {
    if (this.running) return;
    this.running = true;
    this.clearTimer();
    this.pumpDone = this.pump().catch((error) => {
      // A bug here must not stop later batches (the next enqueue starts a new pump).
      say(this.logger, "error", `unexpected error while sending usage: ${String(error)}`);
    });
  }

  private async pump(): Promise<void> {
    try {
      for (;;) {
        if (this.closing && Date.now() >= this.closeDeadline && this.queue.length) {
          this.dropQueue("the client shut down before they could be sent");
        }
        const size = this.queue.length;
        if (size === 0) break;
        const urgent = this.flushing > 0 || this.closing;
        if (!(size >= this.options.batchSize || this.due || urgent)) break;
        this.due = false;
        const batch = this.queue.take(Math.min(this.options.batchSize, size));
        this.inFlight = batch.length;
        try {
          await this.deliver(batch);
        } catch (error) {
          this.dropped += batch.length;
          say(this.logger, "error", `unexpected error sending a batch; ${batch.length} dropped: ${String(error)}`);
        }
        this.inFlight = 0;
        this.notifyIdle();
      }
    } finally {
      this.running = false;
      this.notifyIdle();
      if (this.queue.length && this.timer === undefined && !this.closing) {
        this.timer = unref(setTimeout(() => this.onTimer(true), this.options.flushInterval));
      }
    }
  }

  /** Send one batch until costmon has it, refuses it, or the client shuts down. */
  private async deliver(batch: WireEvent[]): Promise<void> {
    let pending = batch;
    let attempt = 0;
    while (pending.length) {
      let hint: number | null = null;
      let problem: string;
      let response: HttpResponse | undefined;
      this.request = new AbortController();
      try {
        response = await this.transport.postJson(USAGE_PATH, pending, this.options.timeout, this.request);
      } catch (error) {
        if (!(error instanceof NoAnswer)) throw error;
        problem = `costmon unreachable: ${error.name}: ${error.message}`;
      } finally {
        this.request = undefined;
      }
      if (response !== undefined) {
        if (response.status === 200 || response.status === 201) {
          this.accepted(pending, response);
          return;
        }
        if (!RETRY_STATUSES.has(response.status)) {
          pending = await this.refused(pending, response);
          continue;
        }
        hint = retryAfterSeconds(response.headers);
        problem = `costmon answered ${response.status}`;
      }
      if (!(await this.waitToRetry(attempt, hint, problem!, pending.length))) return;
      attempt += 1;
    }
  }

  private accepted(events: WireEvent[], response: HttpResponse): void {
    const body = parseJson(response.body) as { events?: { duplicate?: unknown }[] } | undefined;
    const replies = Array.isArray(body?.events) ? body.events : [];
    this.sent += events.length;
    this.duplicates += replies.filter((e) => e && e.duplicate === true).length;
    this.exitFlushFailed = false;
    if (this.failing) {
      this.failing = false;
      say(this.logger, "info", "reachable again; sending the queued events");
    }
  }

  /** A 4xx: drop what costmon refuses and return the events worth sending again. */
  private async refused(events: WireEvent[], response: HttpResponse): Promise<WireEvent[]> {
    if (response.status === 413 && events.length > 1) {
      const half = Math.floor(events.length / 2);
      say(this.logger, "info", "batch too large; sending it in two halves");
      await this.deliver(events.slice(0, half));
      return events.slice(half);
    }
    const body = parseJson(response.body) as { errors?: unknown } | undefined;
    const errors = (Array.isArray(body?.errors) ? body.errors : []).filter(
      (e): e is { index?: unknown; field?: unknown; message?: unknown } => typeof e === "object" && e !== null,
    );
    const bad = new Set(errors.map((e) => e.index));
    if (
      response.status === 400 &&
      bad.size > 0 &&
      [...bad].every((i) => Number.isInteger(i) && (i as number) >= 0 && (i as number) < events.length)
    ) {
      // costmon stores nothing of a batch with a bad event: send the good ones again.
      for (const error of errors) {
        const event = events[error.index as number];
        say(
          this.logger,
          "warn",
          `costmon refused event ${event?.event_id}: ${String(error.field)}: ${String(error.message)}`,
        );
      }
      this.rejected += bad.size;
      this.lastError = `costmon refused ${bad.size} events (${response.status})`;
      return events.filter((_, i) => !bad.has(i));
    }
    if (response.status === 401 || response.status === 403) {
      say(
        this.logger,
        "error",
        `costmon refused the API key (${response.status}): ${events.length} events dropped; ` +
          "check the key and its ingest scope",
      );
    } else {
      say(
        this.logger,
        "warn",
        `costmon refused a batch of ${events.length} events (${response.status}): ${response.body.slice(0, 500)}`,
      );
    }
    this.rejected += events.length;
    this.lastError = `costmon refused a batch (${response.status})`;
    return [];
  }

  /** Wait before the next attempt; false when the client shut down and time is up. */
  private async waitToRetry(attempt: number, hint: number | null, problem: string, count: number): Promise<boolean> {
    const { retryDelay, maxRetryDelay } = this.options;
    let wait = Math.min(maxRetryDelay, retryDelay * 2 ** attempt);
    wait *= 0.5 + Math.random() * 0.5; // clients that failed together retry apart
    if (hint !== null) wait = Math.max(wait, Math.min(hint * 1000, maxRetryDelay));
    this.retries += 1;
    this.lastError = problem;
    if (!this.failing) {
      this.failing = true;
      say(this.logger, "warn", `${problem}; retrying ${count} events in the background`);
    } else {
      say(this.logger, "debug", `${problem}; retry ${attempt + 1} in ${Math.round(wait)} ms`);
    }
    if (this.closing) {
      const remaining = this.closeDeadline - Date.now();
      if (remaining <= 0) {
        this.dropped += count;
        say(this.logger, "warn", `${count} events dropped: costmon did not take them before shutdown (${problem})`);
        return false;
      }
      wait = Math.min(wait, remaining);
    }
    this.backoffHinted = hint !== null;
    await new Promise<void>((resolve) => {
      const timer = unref(setTimeout(done, wait)); // flush() and shutdown() cut it short
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeBackoff = done;
    });
    this.wakeBackoff = undefined;
    this.backoffHinted = false;
    return true;
  }
}

function unref<T extends { unref?: () => unknown }>(timer: T): T {
  timer.unref?.();
  return timer;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => unref(setTimeout(resolve, ms)));
}

// --- process-wide: send what is queued when the event loop runs dry -------------------------------

const live = new Set<WeakRef<Sender>>();
const forget = new FinalizationRegistry<WeakRef<Sender>>((ref) => live.delete(ref));
let listening = false;

function watch(sender: Sender): void {
  const ref = new WeakRef(sender);
  live.add(ref);
  forget.register(sender, ref);
  if (!listening && typeof process !== "undefined" && typeof process.on === "function") {
    listening = true;
    process.on("beforeExit", () => {
      for (const each of live) each.deref()?.beforeExit();
    });
  }
}
