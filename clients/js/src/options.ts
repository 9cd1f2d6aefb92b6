// What a client is configured with and what it reports: the options, the socket it needs, the
// events, and the URL rules. Shared by client.ts and the two kinds of client.
import { type BackoffOptions, type Decision, parseRetryAfter } from "./backoff.js";
import type { HubError, SessionTerminated } from "./errors.js";
import type { AuthExpiringMessage, WelcomeMessage } from "./messages.js";

/** What the client needs of a WebSocket: the browser's, or the `ws` package's in Node. */
export interface SocketLike {
  readonly readyState: number;
  readonly protocol: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}
export type SocketConstructor = new (url: string, protocols: string[]) => SocketLike;

/** Returns a fresh access token; called before every connection attempt and for every refresh. */
export type TokenProvider = () => Promise<string> | string;

export type ClientState = "idle" | "connecting" | "connected" | "closed";

export interface ClientOptions {
  /** `ws(s)://host:port` (the endpoint path is added) or a full endpoint URL, or several: the
   * client moves to the next on 1012 and when a server is unreachable. */
  url: string | readonly string[];
  getToken: TokenProvider;
  /** The WebSocket constructor (default `globalThis.WebSocket`; in Node 20 pass `ws`'s). */
  WebSocket?: SocketConstructor;
  backoff?: BackoffOptions;
  /** Answer `auth.expiring` with `auth.refresh` (default true). */
  refresh?: boolean;
  /** Handshakes refused with 4401 in a row before giving up (default 3). */
  maxAuthFailures?: number;
  /** ms for the handshake and the `welcome` (default 10 000). */
  openTimeout?: number;
  /** Upper bound of the random pause before reconnecting after 1012, ms (default 250). */
  restartJitter?: number;
  /** Fewest ms between two in-band refreshes, so a token shorter-lived than the hub's warning
   * time cannot start a refresh loop (default 1 000). */
  minRefreshInterval?: number;
}

/** How a session (or an attempt) ended, and what the client does next. */
export interface CloseInfo {
  readonly code: number | null;
  readonly reason: string;
  /** HTTP status of a refused handshake, where the runtime exposes it (Node's `ws`), else null. */
  readonly status: number | null;
  readonly established: boolean;
  readonly action: Decision["action"];
  /** ms until the next attempt; null when the client stops. */
  readonly delay: number | null;
}

export interface ClientEvents {
  state: (state: ClientState) => void;
  welcome: (welcome: WelcomeMessage) => void;
  /** The hub's `auth.expiring` (the client refreshes by itself unless `refresh: false`). */
  expiring: (message: AuthExpiringMessage) => void;
  close: (info: CloseInfo) => void;
  refreshed: (expiresAt: number) => void;
  refreshFailed: (error: HubError) => void;
  terminated: (error: SessionTerminated) => void;
}

/** An HTTP refusal of the handshake: status, `Retry-After` (ms) and the hub's code. */
export interface HttpRefusal {
  readonly status: number;
  readonly retryAfter: number | null;
  readonly code: string;
}

const MAX_BODY = 4096;

interface NodeResponse {
  statusCode?: number;
  headers: Record<string, unknown>;
  on(event: "data", fn: (chunk: unknown) => void): void;
  on(event: "end", fn: () => void): void;
}

/**
 * Node's `ws` lets a client read an HTTP refusal (`ip_banned`, the per-address `rate_limited`),
 * browsers cannot (they see 1006). Where the socket offers it, read the status, `Retry-After`
 * and the JSON body's code, hand them to `found`, then close: `ws` then ends the attempt with a
 * 1006 close, which the client decides by the status.
 */
export function readHttpRefusal(socket: SocketLike, found: (refusal: HttpRefusal) => void): void {
  const node = socket as unknown as { on?: (event: string, fn: (req: unknown, res: NodeResponse) => void) => void };
  if (typeof node.on !== "function") return;
  node.on("unexpected-response", (_req, res) => {
    let body = "";
    res.on("data", (chunk) => { if (body.length < MAX_BODY) body += String(chunk); });
    res.on("end", () => {
      const header = res.headers["retry-after"];
      let code = "";
      try {
        const parsed: unknown = JSON.parse(body);
        const error = parsed && typeof parsed === "object" ? (parsed as { error?: unknown }).error : undefined;
        if (typeof error === "string") code = error;
      } catch { /* not the hub's JSON: the status decides */ }
      found({ status: res.statusCode ?? 0, retryAfter: parseRetryAfter(typeof header === "string" ? header : null), code });
      try { socket.close(); } catch { /* closing */ }
    });
  });
}

/** `ws://host:port` (no path) becomes `ws://host:port/ws/<endpoint>`. */
export function resolveUrl(url: string, endpoint: string): string {
  const parsed = new URL(url);
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") throw new TypeError(`not a ws:// or wss:// URL: ${url}`);
  if (parsed.pathname === "" || parsed.pathname === "/") parsed.pathname = endpoint;
  return parsed.toString();
}
