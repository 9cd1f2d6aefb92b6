// src/backoff.ts
var Backoff = class {
  constructor(options = {}) {
    this.attempts = 0;
    this.base = options.base ?? 500;
    this.cap = options.cap ?? 3e4;
    this.factor = options.factor ?? 2;
    this.jitter = options.jitter ?? 0.5;
    this.random = options.random ?? Math.random;
    if (!(this.base > 0 && this.cap >= this.base && this.factor >= 1 && this.jitter >= 0 && this.jitter <= 1)) {
      throw new RangeError("need 0 < base <= cap, factor >= 1 and 0 <= jitter <= 1");
    }
  }
  /** The un-jittered delay of attempt `attempt` (0-based), ms. */
  ceiling(attempt) {
    let delay = this.base;
    for (let i = 0; i < attempt; i++) {
      delay *= this.factor;
      if (delay >= this.cap) return this.cap;
    }
    return Math.min(delay, this.cap);
  }
  /** The delay before the next attempt, ms; counts the attempt. `retryAfter` in ms. */
  next(retryAfter = null) {
    const ceiling = this.ceiling(this.attempts);
    this.attempts += 1;
    let delay = ceiling * (1 - this.jitter * this.random());
    if (retryAfter !== null && retryAfter > 0) {
      delay = Math.max(delay, retryAfter * (1 + this.jitter / 4 * this.random()));
    }
    return delay;
  }
  /** Start over (after a session was established). */
  reset() {
    this.attempts = 0;
  }
};
var UNAVAILABLE_FLOOR = 5e3;
function decideClose(code) {
  if (code === 4401) return { action: "new_token", retryAfter: null, minDelay: 0 };
  if (code === 4403) return { action: "stop", retryAfter: null, minDelay: 0 };
  if (code === 1012) return { action: "reconnect_now", retryAfter: null, minDelay: 0 };
  if (code === 1013) return { action: "backoff", retryAfter: null, minDelay: UNAVAILABLE_FLOOR };
  return { action: "backoff", retryAfter: null, minDelay: 0 };
}
function decideStatus(status, retryAfter) {
  if (status === 401) return { action: "new_token", retryAfter: null, minDelay: 0 };
  if (status === 403) return { action: "stop", retryAfter: null, minDelay: 0 };
  return { action: "backoff", retryAfter, minDelay: 0 };
}
function parseRetryAfter(value) {
  if (value === null || value === void 0 || !/^\s*\d+(\.\d+)?\s*$/.test(value)) return null;
  return Number(value) * 1e3;
}

// src/errors.ts
var HubError = class extends Error {
  constructor(code, message) {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
};
var SessionTerminated = class extends HubError {
  constructor(code, closeCode, status = null) {
    const where = closeCode !== null ? `close ${closeCode}` : `HTTP ${status ?? "?"}`;
    super(code, `the hub ended the session (${where}): ${code || "no reason given"}`);
    this.closeCode = closeCode;
    this.status = status;
  }
};
var NotConnected = class extends HubError {
  constructor(message = "not connected to the hub (reconnecting or closed)") {
    super("not_connected", message);
  }
};
var ConnectionLost = class extends HubError {
  constructor(message = "the session closed before the hub answered") {
    super("connection_lost", message);
  }
};
var HubTimeoutError = class extends HubError {
  constructor(message) {
    super("timeout", message);
  }
};
var CommandError = class extends HubError {
};
var Forbidden = class extends CommandError {
};
var AgentOffline = class extends CommandError {
};
var CommandExpired = class extends CommandError {
};
var InvalidMessage = class extends CommandError {
};
var Unavailable = class extends CommandError {
};
var RateLimited = class extends CommandError {
};
var RefreshRefused = class extends CommandError {
};
var BY_CODE = {
  forbidden: Forbidden,
  agent_offline: AgentOffline,
  command_expired: CommandExpired,
  invalid_message: InvalidMessage,
  unavailable: Unavailable,
  rate_limited: RateLimited
};
function commandError(code, message) {
  const Kind = BY_CODE[code] ?? (code.startsWith("token_") || code === "claims_invalid" ? RefreshRefused : CommandError);
  return new Kind(code, message);
}

// src/options.ts
var MAX_BODY = 4096;
function readHttpRefusal(socket, found) {
  const node = socket;
  if (typeof node.on !== "function") return;
  node.on("unexpected-response", (_req, res) => {
    let body = "";
    res.on("data", (chunk) => {
      if (body.length < MAX_BODY) body += String(chunk);
    });
    res.on("end", () => {
      const header = res.headers["retry-after"];
      let code = "";
      try {
        const parsed = JSON.parse(body);
        const error = parsed && typeof parsed === "object" ? parsed.error : void 0;
        if (typeof error === "string") code = error;
      } catch {
      }
      found({ status: res.statusCode ?? 0, retryAfter: parseRetryAfter(typeof header === "string" ? header : null), code });
      try {
        socket.close();
      } catch {
      }
    });
  });
}
function resolveUrl(url, endpoint) {
  const parsed = new URL(url);
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") throw new TypeError(`not a ws:// or wss:// URL: ${url}`);
  if (parsed.pathname === "" || parsed.pathname === "/") parsed.pathname = endpoint;
  return parsed.toString();
}

// src/client.ts
var SUBPROTOCOL = "hub.v1";
var OPEN = 1;
var HubClient = class {
  constructor(options) {
    this.listeners = /* @__PURE__ */ new Map();
    this.urlIndex = 0;
    this.socket = null;
    /** The socket of the attempt in progress (before and after its welcome). */
    this.live = null;
    this.current = null;
    this.expiry = null;
    this.stateValue = "idle";
    this.timer = null;
    this.refreshTimer = null;
    this.lastRefreshAt = -Infinity;
    this.authFailures = 0;
    this.nextId = 1;
    this.waiters = /* @__PURE__ */ new Map();
    this.started = null;
    /** How many sessions were established (a `welcome` received). */
    this.sessions = 0;
    /** How many in-band refreshes the hub accepted. */
    this.refreshes = 0;
    /** How the last session or attempt ended. */
    this.lastClose = null;
    const urls = typeof options.url === "string" ? [options.url] : [...options.url];
    if (!urls.length) throw new TypeError("at least one URL is needed");
    for (const url of urls) resolveUrl(url, "/");
    this.urls = urls;
    const Socket = options.WebSocket ?? globalThis.WebSocket;
    if (!Socket) throw new TypeError("no WebSocket here: pass options.WebSocket (in Node 20, the ws package)");
    this.Socket = Socket;
    this.backoff = new Backoff(options.backoff);
    this.options = {
      getToken: options.getToken,
      refresh: options.refresh ?? true,
      maxAuthFailures: options.maxAuthFailures ?? 3,
      openTimeout: options.openTimeout ?? 1e4,
      restartJitter: options.restartJitter ?? 250,
      minRefreshInterval: options.minRefreshInterval ?? 1e3
    };
  }
  // --- state ------------------------------------------------------------------------------------
  get state() {
    return this.stateValue;
  }
  /** The URL of the current (or next) connection. */
  get url() {
    return resolveUrl(this.urls[this.urlIndex] ?? "", this.endpoint);
  }
  /** The `welcome` of the current session (null while disconnected). */
  get welcome() {
    return this.socket ? this.current : null;
  }
  /** When the current session's token expires, Unix seconds (moved by each refresh). */
  get expiresAt() {
    return this.socket ? this.expiry : null;
  }
  /** Listen to `event`; returns the function that stops listening. */
  on(event, listener) {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, set = /* @__PURE__ */ new Set());
    set.add(listener);
    return () => set.delete(listener);
  }
  emit(event, ...args) {
    for (const listener of [...this.listeners.get(event) ?? []]) {
      try {
        listener(...args);
      } catch (error) {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
  setState(state) {
    if (this.stateValue === state) return;
    this.stateValue = state;
    this.emit("state", state);
  }
  // --- lifecycle --------------------------------------------------------------------------------
  /** Start connecting; resolves with the first `welcome`, rejects with {@link SessionTerminated}
   * (or {@link NotConnected} when closed first). Keeps retrying while the hub is unreachable. */
  connect() {
    if (this.stateValue !== "idle") return Promise.reject(new HubError("already_started", "connect() was already called"));
    const promise = new Promise((resolve, reject) => {
      this.started = { resolve, reject };
    });
    this.attempt();
    return promise;
  }
  /** Close the session (1000) and stop reconnecting. Idempotent. */
  close() {
    if (this.stateValue === "closed") return;
    this.stop();
    this.started?.reject(new NotConnected("the client was closed before it connected"));
    this.started = null;
  }
  stop() {
    this.setState("closed");
    this.clearTimers();
    const socket = this.live;
    this.socket = this.live = null;
    this.failWaiters();
    if (socket) {
      socket.onmessage = null;
      socket.onclose = null;
      socket.onerror = () => {
      };
      try {
        socket.close(1e3);
      } catch {
      }
    }
  }
  clearTimers() {
    if (this.timer !== null) clearTimeout(this.timer);
    if (this.refreshTimer !== null) clearTimeout(this.refreshTimer);
    this.timer = this.refreshTimer = null;
  }
  // --- the connection loop ----------------------------------------------------------------------
  async attempt() {
    this.timer = null;
    this.setState("connecting");
    let token;
    try {
      token = await this.options.getToken();
    } catch {
      if (this.stateValue !== "closed") this.schedule(null, "", null, false, { action: "backoff", retryAfter: null, minDelay: 0 });
      return;
    }
    if (this.stateValue === "closed") return;
    let socket;
    try {
      socket = new this.Socket(this.url, [SUBPROTOCOL, `bearer.${token}`]);
    } catch {
      this.ended(null, "token_malformed", null, false, { action: "new_token", retryAfter: null, minDelay: 0 });
      return;
    }
    this.run(socket);
  }
  run(socket) {
    this.live = socket;
    let established = false;
    let refusal = null;
    const openTimer = setTimeout(() => {
      try {
        socket.close(4e3, "welcome_timeout");
      } catch {
      }
    }, this.options.openTimeout);
    readHttpRefusal(socket, (read) => {
      refusal = read;
    });
    socket.onerror = () => {
    };
    socket.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!message || typeof message !== "object" || typeof message.type !== "string") return;
      if (!established) {
        clearTimeout(openTimer);
        if (message.type !== "welcome") {
          try {
            socket.close(4e3, "protocol_error");
          } catch {
          }
          return;
        }
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
      const http = refusal;
      if (http) {
        this.ended(null, http.code, http.status, false, decideStatus(http.status, http.retryAfter));
      } else {
        if (event.code === 1006 || event.code === 1005) this.rotate();
        this.ended(event.code, event.reason, null, established, decideClose(event.code));
      }
    };
  }
  opened(socket, welcome) {
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
  ended(code, reason, status, established, decision) {
    if (decision.action === "stop") {
      this.terminate(new SessionTerminated(reason, code, status), code, reason, status, established, decision);
      return;
    }
    if (decision.action === "new_token" && !established) {
      this.authFailures += 1;
      if (this.authFailures >= this.options.maxAuthFailures) {
        this.terminate(new SessionTerminated(reason || "token_invalid", code, status), code, reason, status, established, decision);
        return;
      }
    }
    this.schedule(code, reason, status, established, decision);
  }
  schedule(code, reason, status, established, decision) {
    let delay;
    if (decision.action === "reconnect_now") {
      this.rotate();
      delay = this.options.restartJitter * this.backoff.random();
    } else if (decision.action === "new_token" && established) {
      delay = 0;
    } else {
      delay = Math.max(this.backoff.next(decision.retryAfter), decision.minDelay);
    }
    this.setState("connecting");
    this.lastClose = { code, reason, status, established, action: decision.action, delay };
    this.emit("close", this.lastClose);
    if (this.stateValue !== "closed") this.timer = setTimeout(() => void this.attempt(), delay);
  }
  terminate(error, code, reason, status, established, decision) {
    this.lastClose = { code, reason, status, established, action: decision.action, delay: null };
    this.stop();
    this.emit("close", this.lastClose);
    this.emit("terminated", error);
    this.started?.reject(error);
    this.started = null;
  }
  rotate() {
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
  }
  // --- requests and messages ------------------------------------------------------------------
  send(frame) {
    const socket = this.socket;
    if (!socket || socket.readyState !== OPEN) throw new NotConnected();
    socket.send(JSON.stringify(frame));
    return socket;
  }
  newId(prefix) {
    return `${prefix}${this.nextId++}`;
  }
  /** Send `frame` with `id` (a fresh one by default); resolves with the answer carrying it as `ref`. */
  request(frame, prefix, timeout, id = this.newId(prefix)) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(id);
        reject(new HubTimeoutError(`no answer to ${String(frame.type)} within ${timeout} ms`));
      }, timeout);
      this.waiters.set(id, {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        }
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
  failWaiters() {
    const waiters = [...this.waiters.values()];
    this.waiters.clear();
    for (const waiter of waiters) waiter.reject(new ConnectionLost());
  }
  dispatch(socket, message) {
    const ref = "ref" in message ? message.ref : null;
    if (ref !== null && ref !== void 0) {
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
  expiring(socket, message) {
    this.emit("expiring", message);
    if (!this.options.refresh) return;
    const now = Date.now();
    const wait = Math.max(0, Math.min(this.lastRefreshAt + this.options.minRefreshInterval - now, message.seconds_left * 500));
    if (this.refreshTimer !== null) clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      if (this.socket !== socket) return;
      this.refresh().catch((error) => {
        this.emit("refreshFailed", error instanceof HubError ? error : new HubError("token_provider_failed", String(error)));
      });
    }, wait);
  }
  /** Refresh the session's token now (what `auth.expiring` triggers); resolves with the new
   * `expires_at`. A refused token rejects with a {@link CommandError} carrying the token code. */
  async refresh(timeout = 1e4) {
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
  async ping(timeout = 1e4) {
    await this.request({ type: "ping" }, "p", timeout);
  }
  // --- hooks for the two kinds of client ------------------------------------------------------
  /** A session opened (subclasses re-establish their state). */
  onWelcome(_welcome) {
  }
  /** A message that answers nothing this client waits for. */
  handle(_message) {
  }
  /** A session ended (subclasses fail what waited on it). */
  disconnected() {
  }
};

// src/agent.ts
var AgentClient = class extends HubClient {
  constructor(options) {
    super(options);
    this.endpoint = "/ws/agent";
    this.onCommand = options.onCommand;
  }
  /** Send an event to every dashboard subscribed to this agent; throws {@link NotConnected}. */
  emitEvent(payload) {
    this.send({ type: "event", payload });
  }
  handle(message) {
    if (message.type === "command") void this.answer(message);
  }
  async answer(command) {
    let payload;
    try {
      payload = this.onCommand ? await this.onCommand(command.command_id, command.from, command.payload ?? null) : { error: "no_handler" };
    } catch (error) {
      payload = { error: "handler_failed", exception: error instanceof Error ? error.name : typeof error };
    }
    try {
      this.send({ type: "result", command_id: command.command_id, payload });
    } catch {
    }
  }
};

// src/dashboard.ts
var EARLY_RESULTS = 1e3;
var DashboardClient = class extends HubClient {
  constructor() {
    super(...arguments);
    this.endpoint = "/ws/dashboard";
    this.agents = null;
    this.handlers = {};
    this.positions = /* @__PURE__ */ new Map();
    this.results = /* @__PURE__ */ new Map();
    // Commands in flight by their `id`: an `error` about one (`agent_offline` when the agent left)
    // carries it as `ref`, and may come right behind `command.accepted`.
    this.commands = /* @__PURE__ */ new Map();
    this.early = /* @__PURE__ */ new Map();
  }
  /** Watch `agents` (or `"*"`: all of the tenant's, including those that come online later);
   * replaces the previous subscription. Resolves with what the hub confirmed. */
  async subscribe(agents, handlers = {}, timeout = 1e4) {
    this.agents = agents === "*" ? "*" : [...agents];
    this.handlers = handlers;
    for (const [agent, position] of Object.entries(handlers.since ?? {})) this.positions.set(agent, position);
    const answer = await this.request(this.subscribeFrame(), "s", timeout);
    if (answer.type === "subscribed") {
      this.handlers.recovered?.(answer.recovered ?? {});
      return answer.agents;
    }
    if (answer.type === "error") throw commandError(answer.error, answer.message);
    throw new HubError("protocol_error", `unexpected answer to subscribe: ${answer.type}`);
  }
  /** Where this dashboard stands in each agent's events (for `since` after a page reload). */
  get positionsSeen() {
    return Object.fromEntries(this.positions);
  }
  /** Send `payload` to agent `agentId`; resolves with the agent's result payload. */
  async sendCommand(agentId, payload = null, options = {}) {
    const timeout = options.timeout ?? 3e4;
    const started = Date.now();
    const id = this.newId("c");
    let failed = null;
    this.commands.set(id, (error) => {
      failed = error;
    });
    try {
      const answer = await this.request({ type: "command", agent_id: agentId, payload }, "c", timeout, id);
      if (answer.type === "error") throw commandError(answer.error, answer.message);
      if (answer.type !== "command.accepted") throw new HubError("protocol_error", `unexpected answer to command: ${answer.type}`);
      if (failed !== null) throw failed;
      const commandId = answer.command_id;
      const early = this.early.get(commandId);
      if (early) {
        this.early.delete(commandId);
        return early.payload ?? null;
      }
      return await new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          this.results.delete(commandId);
          reject(new HubTimeoutError(`no result for command ${commandId} within ${timeout} ms`));
        }, Math.max(0, timeout - (Date.now() - started)));
        const pending = {
          resolve: (value) => {
            clearTimeout(timer);
            resolve(value);
          },
          reject: (error) => {
            clearTimeout(timer);
            this.results.delete(commandId);
            reject(error);
          }
        };
        this.results.set(commandId, pending);
        this.commands.set(id, pending.reject);
      });
    } finally {
      this.commands.delete(id);
    }
  }
  subscribeFrame() {
    const frame = { type: "subscribe", agents: this.agents };
    const since = [...this.positions].filter(([agent]) => this.agents === "*" || this.agents?.includes(agent));
    if (since.length) frame.since = Object.fromEntries(since);
    return frame;
  }
  onWelcome(_welcome) {
    if (this.agents === null) return;
    try {
      this.send({ ...this.subscribeFrame(), id: this.newId("s") });
    } catch {
    }
  }
  handle(message) {
    switch (message.type) {
      case "presence":
        this.handlers.presence?.(message);
        return;
      case "subscribed":
        this.handlers.recovered?.(message.recovered ?? {});
        return;
      case "event": {
        const { seq, epoch } = message;
        if (typeof seq === "number" && typeof epoch === "string") this.positions.set(message.agent_id, { epoch, seq });
        this.handlers.event?.(message);
        return;
      }
      case "result": {
        const pending = this.results.get(message.command_id);
        if (pending) {
          this.results.delete(message.command_id);
          pending.resolve(message.payload ?? null);
        } else {
          this.early.set(message.command_id, message);
          if (this.early.size > EARLY_RESULTS) this.early.delete(this.early.keys().next().value);
        }
        return;
      }
      case "error": {
        const fail = message.ref === null || message.ref === void 0 ? void 0 : this.commands.get(String(message.ref));
        if (fail) {
          this.commands.delete(String(message.ref));
          fail(commandError(message.error, message.message));
        }
        return;
      }
      default:
        this.other(message);
    }
  }
  other(message) {
    if (message.type === "presence.snapshot" && Array.isArray(message.agents)) {
      for (const entry of message.agents) {
        if (typeof entry?.agent_id === "string" && (entry.status === "online" || entry.status === "offline")) {
          this.handlers.presence?.({ type: "presence", agent_id: entry.agent_id, status: entry.status });
        }
      }
    }
  }
  disconnected() {
    const failing = [...this.commands.values()];
    this.commands.clear();
    for (const fail of failing) fail(new ConnectionLost("the session closed before the result: its outcome is unknown"));
  }
};

// src/messages.ts
var SERVER_TYPES = ["welcome", "auth.expiring", "auth.refreshed", "error", "pong", "command", "subscribed", "command.accepted", "result", "event", "presence", "presence.snapshot"];
export {
  AgentClient,
  AgentOffline,
  Backoff,
  CommandError,
  CommandExpired,
  ConnectionLost,
  DashboardClient,
  Forbidden,
  HubClient,
  HubError,
  HubTimeoutError,
  InvalidMessage,
  NotConnected,
  RateLimited,
  RefreshRefused,
  SERVER_TYPES,
  SessionTerminated,
  Unavailable,
  commandError,
  decideClose,
  decideStatus,
  parseRetryAfter,
  resolveUrl
};
