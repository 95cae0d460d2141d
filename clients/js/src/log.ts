/** Where the client says what went wrong: a logger of the application's, or the console. */
export interface Logger {
  debug?(message: string): void;
  info?(message: string): void;
  warn?(message: string): void;
  error?(message: string): void;
}

export type Level = "debug" | "info" | "warn" | "error";

/** The default: warnings and errors on the console, prefixed "costmon:"; nothing else. */
export const consoleLogger: Logger = {
  warn: (message) => console.warn(message),
  error: (message) => console.error(message),
};

export function say(logger: Logger | null, level: Level, message: string): void {
  const write = logger?.[level];
  if (!write) return;
  try {
    write.call(logger, `costmon: ${message}`);
  } catch {
    // A logger that throws must not break the application's call either.
  }
}
