// Reconnect delays and the policy that picks one per close code. Pure: no clock, no I/O; the
// random source is injected so that a test can replay a schedule. Mirrors hubclient/backoff.py.

export interface BackoffOptions {
  /** First delay, ms (default 500). */
  base?: number;
  /** Largest delay, ms (default 30 000). */
  cap?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
  /** 0..1: the n-th delay is drawn in [(1 - jitter)·d, d] (default 0.5). */
  jitter?: number;
  /** Uniform [0, 1) source (default Math.random). */
  random?: () => number;
}

/**
 * Exponential backoff with jitter: the n-th delay (from 0) is drawn uniformly in
 * `[(1 - jitter)·d, d]` with `d = min(cap, base·factorⁿ)`, so clients that lost the same server do
 * not come back in step. A `Retry-After` is a floor, spread by up to `jitter / 4` of it on top so
 * that a crowd told "60" does not return at once.
 */
export class Backoff {
  readonly base: number;
  readonly cap: number;
  readonly factor: number;
  readonly jitter: number;
  readonly random: () => number;
  attempts = 0;

  constructor(options: BackoffOptions = {}) {
    this.base = options.base ?? 500;
    this.cap = options.cap ?? 30_000;
    this.factor = options.factor ?? 2;
    this.jitter = options.jitter ?? 0.5;
    this.random = options.random ?? Math.random;
    if (!(this.base > 0 && this.cap >= this.base && this.factor >= 1 && this.jitter >= 0 && this.jitter <= 1)) {
      throw new RangeError("need 0 < base <= cap, factor >= 1 and 0 <= jitter <= 1");
    }
  }

  /** The un-jittered delay of attempt `attempt` (0-based), ms. */
  ceiling(attempt: number): number {
    let delay = this.base;
    for (let i = 0; i < attempt; i++) {
      delay *= this.factor;
      if (delay >= this.cap) return this.cap;
    }
    return Math.min(delay, this.cap);
  }

  /** The delay before the next attempt, ms; counts the attempt. `retryAfter` in ms. */
  next(retryAfter: number | null = null): number {
    const ceiling = this.ceiling(this.attempts);
    this.attempts += 1;
    let delay = ceiling * (1 - this.jitter * this.random());
    if (retryAfter !== null && retryAfter > 0) {
      delay = Math.max(delay, retryAfter * (1 + (this.jitter / 4) * this.random()));
    }
    return delay;
  }

  /** Start over (after a session was established). */
  reset(): void {
    this.attempts = 0;
  }
}

/** What to do after a session ended or a handshake was refused. */
export type Action =
  /** 1012 `service_restart`: reconnect at once to the next URL, with only a little jitter. */
  | "reconnect_now"
  /** 4401 / 401: get a new token from `getToken`, then reconnect. */
  | "new_token"
  /** Network loss, 4429, 4408, 1013, HTTP 429/503, anything unexpected: wait, then reconnect. */
  | "backoff"
  /** 4403 / 403: a decision, not an accident; do not reconnect. */
  | "stop";

export interface Decision {
  readonly action: Action;
  /** The server's `Retry-After` (ms), a floor for the delay; only readable in the HTTP form. */
  readonly retryAfter: number | null;
  /** A floor of the policy's own, ms (1013 in the socket form: at least 5 s). */
  readonly minDelay: number;
}

export const UNAVAILABLE_FLOOR = 5_000;

/** The policy for a live session (or a socket-form refusal) closed with `code`. */
export function decideClose(code: number | null): Decision {
  if (code === 4401) return { action: "new_token", retryAfter: null, minDelay: 0 };
  if (code === 4403) return { action: "stop", retryAfter: null, minDelay: 0 };
  if (code === 1012) return { action: "reconnect_now", retryAfter: null, minDelay: 0 };
  if (code === 1013) return { action: "backoff", retryAfter: null, minDelay: UNAVAILABLE_FLOOR };
  return { action: "backoff", retryAfter: null, minDelay: 0 };
}

/** The policy for a handshake refused over HTTP with `status` (readable in Node, not in browsers). */
export function decideStatus(status: number, retryAfter: number | null): Decision {
  if (status === 401) return { action: "new_token", retryAfter: null, minDelay: 0 };
  if (status === 403) return { action: "stop", retryAfter: null, minDelay: 0 };
  return { action: "backoff", retryAfter, minDelay: 0 };
}

/** `Retry-After` in ms (the delay-seconds form; an HTTP date is ignored). */
export function parseRetryAfter(value: string | null | undefined): number | null {
  if (value === null || value === undefined || !/^\s*\d+(\.\d+)?\s*$/.test(value)) return null;
  return Number(value) * 1000;
}
