// The connection loop shared by dashboards and agents: connect with the token in the subprotocol,
// read every frame, refresh in-band on `auth.expiring`, reconnect by the policy of backoff.ts
// (rotating through the URLs) until closed or the hub ends the session for good.
import { Backoff, type Decision, decideClose, decideStatus } from "./backoff.js";
import { commandError, ConnectionLost, HubError, HubTimeoutError, NotConnected, SessionTerminated } from "./errors.js";
import type { AuthExpiringMessage, ServerMessage, WelcomeMessage } from "./messages.js";
import {
  type ClientEvents, type ClientOptions, type ClientState, type CloseInfo, type HttpRefusal, readHttpRefusal,
  resolveUrl, type SocketConstructor, type SocketLike,
} from "./options.js";

const SUBPROTOCOL = "hub.v1";
const OPEN = 1;

interface Waiter {
  resolve: (message: ServerMessage) => void;
  reject: (error: HubError) => void;
}

/**
 * What agents and dashboards share (use {@link DashboardClient} or {@link AgentClient}).
 *
 * Guarantees: the token only travels in the subprotocol list or in an `auth.refresh` message
 * (never in a URL); a 4403 (or HTTP 403) stops the client for good; 4401 after a live session
 * reconnects at once with a token from `getToken`, 4401 at the handshake backs off and stops after
 * `maxAuthFailures` in a row; 1012 reconnects within `restartJitter` to the next URL; everything
 * else backs off with jitter, a readable `Retry-After` being a floor. Requests waiting when a
 * session ends reject with {@link ConnectionLost}.
 */
export abstract class HubClient {
  protected abstract readonly endpoint: string;
  readonly urls: readonly string[];
  readonly backoff: Backoff;
  private readonly options: Required<Omit<ClientOptions, "url" | "backoff" | "WebSocket">>;
  private readonly Socket: SocketConstructor;
  private listeners = new Map<keyof ClientEvents, Set<unknown>>();
  private urlIndex = 0;
  private socket: SocketLike | null = null;
  /** The socket of the attempt in progress (before and after its welcome). */
  private live: SocketLike | null = null;
  private current: WelcomeMessage | null = null;
  private expiry: number | null = null;
  private stateValue: ClientState = "idle";
  private timer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private lastRefreshAt = -Infinity;
  private authFailures = 0;
  private nextId = 1;
  private waiters = new Map<string, Waiter>();
  private started: { resolve: (w: WelcomeMessage) => void; reject: (e: HubError) => void } | null = null;
  /** How many sessions were established (a `welcome` received). */
  sessions = 0;
  /** How many in-band refreshes the hub accepted. */
  refreshes = 0;
  /** How the last session or attempt ended. */
  lastClose: CloseInfo | null = null;

  constructor(options: ClientOptions) {
    const urls = typeof options.url === "string" ? [options.url] : [...options.url];
    if (!urls.length) throw new TypeError("at least one URL is needed");
    for (const url of urls) resolveUrl(url, "/"); // a bad URL throws here, not in the loop
    this.urls = urls;
    const Socket = options.WebSocket ?? (globalThis as { WebSocket?: SocketConstructor }).WebSocket;
    if (!Socket) throw new TypeError("no WebSocket here: pass options.WebSocket (in Node 20, the ws package)");
    this.Socket = Socket;
    this.backoff = new Backoff(options.backoff);
    this.options = {
      getToken: options.getToken,
      refresh: options.refresh ?? true,
      maxAuthFailures: options.maxAuthFailures ?? 3,
      openTimeout: options.openTimeout ?? 10_000,
      restartJitter: options.restartJitter ?? 250,
      minRefreshInterval: options.minRefreshInterval ?? 1_000,
    };
  }

  // --- state ------------------------------------------------------------------------------------

  get state(): ClientState { return this.stateValue; }
  /** The URL of the current (or next) connection. */
  get url(): string { return resolveUrl(this.urls[this.urlIndex] ?? "", this.endpoint); }
  /** The `welcome` of the current session (null while disconnected). */
  get welcome(): WelcomeMessage | null { return this.socket ? this.current : null; }
  /** When the current session's token expires, Unix seconds (moved by each refresh). */
  get expiresAt(): number | null { return this.socket ? this.expiry : null; }

  /** Listen to `event`; returns the function that stops listening. */
  on<K extends keyof ClientEvents>(event: K, listener: ClientEvents[K]): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  protected emit<K extends keyof ClientEvents>(event: K, ...args: Parameters<ClientEvents[K]>): void {
    for (const listener of [...(this.listeners.get(event) ?? [])]) {
      try {
        (listener as (...a: Parameters<ClientEvents[K]>) => void)(...args);
      } catch (error) {
        // A listener's bug must not break the connection loop.
        queueMicrotask(() => { throw error; });
      }
    }
  }

  private setState(state: ClientState): void {
    if (this.stateValue === state) return;
    this.stateValue = state;
    this.emit("state", state);
  }

  // --- lifecycle --------------------------------------------------------------------------------

  /** Start connecting; resolves with the first `welcome`, rejects with {@link SessionTerminated}
   * (or {@link NotConnected} when closed first). Keeps retrying while the hub is unreachable. */
  connect(): Promise<WelcomeMessage> {
    if (this.stateValue !== "idle") return Promise.reject(new HubError("already_started", "connect() was already called"));
    const promise = new Promise<WelcomeMessage>((resolve, reject) => { this.started = { resolve, reject }; });
    this.attempt();
    return promise;
  }

  /** Close the session (1000) and stop reconnecting. Idempotent. */
  close(): void {
    if (this.stateValue === "closed") return;
    this.stop();
    this.started?.reject(new NotConnected("the client was closed before it connected"));
    this.started = null;
  }

  private stop(): void {
    this.setState("closed");
    this.clearTimers();
    const socket = this.live;
    this.socket = this.live = null;
    this.failWaiters();
    if (socket) {
      socket.onmessage = null;
      socket.onclose = null;
      // Closing a socket still connecting makes `ws` emit an error: keep it handled.
      socket.onerror = () => { /* closed on purpose */ };
      try { socket.close(1000); } catch { /* already closing */ }
    }
  }

  private clearTimers(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    if (this.refreshTimer !== null) clearTimeout(this.refreshTimer);
    this.timer = this.refreshTimer = null;
  }

  // --- the connection loop ----------------------------------------------------------------------

  private async attempt(): Promise<void> {
    this.timer = null;
    this.setState("connecting");
    let token: string;
    try {
      token = await this.options.getToken();
    } catch {
      if (this.stateValue !== "closed") this.schedule(null, "", null, false, { action: "backoff", retryAfter: null, minDelay: 0 });
      return;
    }
    if (this.stateValue === "closed") return;
    let socket: SocketLike;
    try {
      socket = new this.Socket(this.url, [SUBPROTOCOL, `bearer.${token}`]);
    } catch {
      // A token with characters a subprotocol cannot carry is not a compact JWS.
      this.ended(null, "token_malformed", null, false, { action: "new_token", retryAfter: null, minDelay: 0 });
      return;
    }
    this.run(socket);
  }

  private run(socket: SocketLike): void {
    this.live = socket;
    let established = false;
    let refusal: HttpRefusal | null = null;
    const openTimer = setTimeout(() => { try { socket.close(4000, "welcome_timeout"); } catch { /* closing */ } }, this.options.openTimeout);
    readHttpRefusal(socket, (read) => { refusal = read; });
    socket.onerror = () => { /* the close event follows and decides */ };
    socket.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      let message: ServerMessage;
      try {
        message = JSON.parse(event.data) as ServerMessage;
      } catch {
        return;
      }
      if (!message || typeof message !== "object" || typeof message.type !== "string") return;
      if (!established) {
        clearTimeout(openTimer);
        if (message.type !== "welcome") { try { socket.close(4000, "protocol_error"); } catch { /* closing */ } return; }
        established = true;
        this.opened(socket, message);
        return;
      }
      this.dispatch(socket, message);
    };
    socket.onclose = (event) => {
      clearTimeout(openTimer);
      if (this.live !== socket) return;
      this.socket = this.live = null;
      this.failWaiters();
      if (established) this.disconnected();
      if (this.stateValue === "closed") return;
      const http = refusal as HttpRefusal | null;
      if (http) {
        this.ended(null, http.code, http.status, false, decideStatus(http.status, http.retryAfter));
      } else {
        if (event.code === 1006 || event.code === 1005) this.rotate();
        this.ended(event.code, event.reason, null, established, decideClose(event.code));
      }
    };
  }

  private opened(socket: SocketLike, welcome: WelcomeMessage): void {
    this.socket = socket;
    this.current = welcome;
    this.expiry = welcome.expires_at;
    this.sessions += 1;
    this.authFailures = 0;
    this.backoff.reset();
    this.setState("connected");
    this.started?.resolve(welcome);
    this.started = null;
    this.emit("welcome", welcome);
    this.onWelcome(welcome);
  }

  private ended(code: number | null, reason: string, status: number | null, established: boolean, decision: Decision): void {
    if (decision.action === "stop") {
      this.terminate(new SessionTerminated(reason, code, status), code, reason, status, established, decision);
      return;
    }
    if (decision.action === "new_token" && !established) {
      // Refused at the handshake: each attempt counts towards the address's automatic ban.
      this.authFailures += 1;
      if (this.authFailures >= this.options.maxAuthFailures) {
        this.terminate(new SessionTerminated(reason || "token_invalid", code, status), code, reason, status, established, decision);
        return;
      }
    }
    this.schedule(code, reason, status, established, decision);
  }

  private schedule(code: number | null, reason: string, status: number | null, established: boolean, decision: Decision): void {
    let delay: number;
    if (decision.action === "reconnect_now") {
      this.rotate();
      delay = this.options.restartJitter * this.backoff.random();
    } else if (decision.action === "new_token" && established) {
      delay = 0; // the session lived and its token ran out: reconnect with a fresh one
    } else {
      delay = Math.max(this.backoff.next(decision.retryAfter), decision.minDelay);
    }
    this.setState("connecting");
    this.lastClose = { code, reason, status, established, action: decision.action, delay };
    this.emit("close", this.lastClose);
    // A "close" listener may have closed the client (a console that waits for its operator).
    if (this.stateValue !== "closed") this.timer = setTimeout(() => void this.attempt(), delay);
  }

  private terminate(error: SessionTerminated, code: number | null, reason: string, status: number | null, established: boolean, decision: Decision): void {
    this.lastClose = { code, reason, status, established, action: decision.action, delay: null };
    this.stop();
    this.emit("close", this.lastClose);
    this.emit("terminated", error);
    this.started?.reject(error);
    this.started = null;
  }

  private rotate(): void {
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
  }

  // --- requests and messages ------------------------------------------------------------------

  protected send(frame: object): SocketLike {
    const socket = this.socket;
    if (!socket || socket.readyState !== OPEN) throw new NotConnected();
    socket.send(JSON.stringify(frame));
    return socket;
  }

  protected newId(prefix: string): string {
    return `${prefix}${this.nextId++}`;
  }

  /** Send `frame` with `id` (a fresh one by default); resolves with the answer carrying it as `ref`. */
  protected request(
    frame: Record<string, unknown>, prefix: string, timeout: number, id = this.newId(prefix),
  ): Promise<ServerMessage> {
    return new Promise<ServerMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(id);
        reject(new HubTimeoutError(`no answer to ${String(frame.type)} within ${timeout} ms`));
      }, timeout);
      this.waiters.set(id, {
        resolve: (m) => { clearTimeout(timer); resolve(m); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      try {
        this.send({ ...frame, id });
      } catch (error) {
        this.waiters.delete(id);
        clearTimeout(timer);
        reject(error);
      }
    });
  }

  private failWaiters(): void {
    const waiters = [...this.waiters.values()];
    this.waiters.clear();
    for (const waiter of waiters) waiter.reject(new ConnectionLost());
  }

  private dispatch(socket: SocketLike, message: ServerMessage): void {
    const ref = "ref" in message ? message.ref : null;
    if (ref !== null && ref !== undefined) {
      const waiter = this.waiters.get(String(ref));
      if (waiter) {
        this.waiters.delete(String(ref));
        waiter.resolve(message);
        return;
      }
    }
    if (message.type === "auth.expiring") {
      this.expiring(socket, message);
      return;
    }
    this.handle(message);
  }

  private expiring(socket: SocketLike, message: AuthExpiringMessage): void {
    this.emit("expiring", message);
    if (!this.options.refresh) return;
    const now = Date.now();
    const wait = Math.max(0, Math.min(this.lastRefreshAt + this.options.minRefreshInterval - now, message.seconds_left * 500));
    if (this.refreshTimer !== null) clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      if (this.socket !== socket) return;
      this.refresh().catch((error: unknown) => {
        // The session goes on under the old token; at its expiry the hub closes 4401 and the
        // loop reconnects with a fresh token.
        this.emit("refreshFailed", error instanceof HubError ? error : new HubError("token_provider_failed", String(error)));
      });
    }, wait);
  }

  /** Refresh the session's token now (what `auth.expiring` triggers); resolves with the new
   * `expires_at`. A refused token rejects with a {@link CommandError} carrying the token code. */
  async refresh(timeout = 10_000): Promise<number> {
    if (!this.socket) throw new NotConnected();
    const socket = this.socket;
    this.lastRefreshAt = Date.now();
    const token = await this.options.getToken();
    const answer = await this.request({ type: "auth.refresh", token }, "r", timeout);
    if (answer.type === "auth.refreshed") {
      if (this.socket === socket) this.expiry = answer.expires_at;
      this.refreshes += 1;
      this.emit("refreshed", answer.expires_at);
      return answer.expires_at;
    }
    if (answer.type === "error") throw commandError(answer.error, answer.message);
    throw new HubError("protocol_error", `unexpected answer to auth.refresh: ${answer.type}`);
  }

  /** Round trip a `ping`. */
  async ping(timeout = 10_000): Promise<void> {
    await this.request({ type: "ping" }, "p", timeout);
  }

  // --- hooks for the two kinds of client ------------------------------------------------------

  /** A session opened (subclasses re-establish their state). */
  protected onWelcome(_welcome: WelcomeMessage): void { /* hook */ }
  /** A message that answers nothing this client waits for. */
  protected handle(_message: ServerMessage): void { /* hook */ }
  /** A session ended (subclasses fail what waited on it). */
  protected disconnected(): void { /* hook */ }
}
