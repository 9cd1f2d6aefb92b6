// The dashboard client: subscribe to agents' presence and events, send commands to them.
import { HubClient } from "./client.js";
import { commandError, ConnectionLost, HubError, HubTimeoutError } from "./errors.js";
import type {
  EventDeliveryMessage, JsonValue, PresenceMessage, ResultDeliveryMessage, ServerMessage, WelcomeMessage,
} from "./messages.js";

/** Where a dashboard stands in one agent's event stream (the hub's `seq`/`epoch`). */
export interface Position {
  readonly epoch: string;
  readonly seq: number;
}

export interface SubscribeHandlers {
  /** Each agent's status: once per agent after every (re)subscribe, then on every change.
   * A `presence.snapshot` arrives here entry by entry. */
  presence?: (presence: PresenceMessage) => void;
  event?: (event: EventDeliveryMessage) => void;
  /** Ask the hub to replay what was missed since these positions (kept up to date by the
   * client from the events it receives, and re-sent on every reconnect). */
  since?: Readonly<Record<string, Position>>;
  /** The hub's `recovered` after every (re)subscribe, the automatic one after a reconnect
   * included: `false` for an agent some of whose missed events are lost for good (its history
   * was trimmed or restarted): reload that agent's state. */
  recovered?: (recovered: Readonly<Record<string, boolean>>) => void;
}

export interface CommandOptions {
  /** ms for `command.accepted` and the agent's result together (default 30 000). */
  timeout?: number;
}

interface Pending {
  resolve: (payload: JsonValue) => void;
  reject: (error: HubError) => void;
}

const EARLY_RESULTS = 1000;

/**
 * A dashboard on `/ws/dashboard`.
 *
 * Guarantees: the subscription is re-sent after every reconnect (with `since` when the events
 * carried positions); `sendCommand` resolves with the agent's result payload even when the result
 * overtakes `command.accepted`, ends with an error about the command (`agent_offline` when the
 * agent left) even when it comes right behind the acceptance, and rejects with a typed error: {@link Forbidden},
 * {@link AgentOffline}, another {@link CommandError}, {@link NotConnected},
 * {@link ConnectionLost} (closed before the result: the outcome is unknown) or
 * {@link HubTimeoutError}.
 */
export class DashboardClient extends HubClient {
  protected readonly endpoint = "/ws/dashboard";
  private agents: readonly string[] | "*" | null = null;
  private handlers: SubscribeHandlers = {};
  private positions = new Map<string, Position>();
  private results = new Map<string, Pending>();
  // Commands in flight by their `id`: an `error` about one (`agent_offline` when the agent left)
  // carries it as `ref`, and may come right behind `command.accepted`.
  private commands = new Map<string, (error: HubError) => void>();
  private early = new Map<string, ResultDeliveryMessage>();

  /** Watch `agents` (or `"*"`: all of the tenant's, including those that come online later);
   * replaces the previous subscription. Resolves with what the hub confirmed. */
  async subscribe(agents: readonly string[] | "*", handlers: SubscribeHandlers = {}, timeout = 10_000): Promise<string[]> {
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
  get positionsSeen(): Readonly<Record<string, Position>> {
    return Object.fromEntries(this.positions);
  }

  /** Send `payload` to agent `agentId`; resolves with the agent's result payload. */
  async sendCommand(agentId: string, payload: JsonValue = null, options: CommandOptions = {}): Promise<JsonValue> {
    const timeout = options.timeout ?? 30_000;
    const started = Date.now();
    const id = this.newId("c");
    // An error (or the session's end) handled before this function resumes with the acceptance
    // is kept for it.
    let failed: HubError | null = null;
    this.commands.set(id, (error) => { failed = error; });
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
      return await new Promise<JsonValue>((resolve, reject) => {
        const timer = setTimeout(() => {
          this.results.delete(commandId);
          reject(new HubTimeoutError(`no result for command ${commandId} within ${timeout} ms`));
        }, Math.max(0, timeout - (Date.now() - started)));
        const pending: Pending = {
          resolve: (value) => { clearTimeout(timer); resolve(value); },
          reject: (error) => { clearTimeout(timer); this.results.delete(commandId); reject(error); },
        };
        this.results.set(commandId, pending);
        this.commands.set(id, pending.reject);
      });
    } finally {
      this.commands.delete(id);
    }
  }

  private subscribeFrame(): Record<string, unknown> {
    const frame: Record<string, unknown> = { type: "subscribe", agents: this.agents };
    const since = [...this.positions].filter(([agent]) => this.agents === "*" || this.agents?.includes(agent));
    if (since.length) frame.since = Object.fromEntries(since);
    return frame;
  }

  protected override onWelcome(_welcome: WelcomeMessage): void {
    if (this.agents === null) return;
    // Answered by `subscribed` (nobody waits for it) and then the current presence.
    try { this.send({ ...this.subscribeFrame(), id: this.newId("s") }); } catch { /* closed meanwhile */ }
  }

  protected override handle(message: ServerMessage): void {
    switch (message.type) {
      case "presence":
        this.handlers.presence?.(message);
        return;
      case "subscribed":
        // The answer to the automatic subscribe after a reconnect (nobody waits for it).
        this.handlers.recovered?.(message.recovered ?? {});
        return;
      case "event": {
        const { seq, epoch } = message as { seq?: unknown; epoch?: unknown };
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
          // The result overtook its command.accepted (the two travel different paths).
          this.early.set(message.command_id, message);
          if (this.early.size > EARLY_RESULTS) this.early.delete(this.early.keys().next().value as string);
        }
        return;
      }
      case "error": {
        const fail = message.ref === null || message.ref === undefined ? undefined : this.commands.get(String(message.ref));
        if (fail) {
          this.commands.delete(String(message.ref));
          fail(commandError(message.error, message.message));
        }
        return;
      }
      default:
        this.other(message as { type: string });
    }
  }

  private other(message: { type: string; agents?: unknown }): void {
    // The large-fleet form of presence (sent after `subscribed` instead of one per agent).
    if (message.type === "presence.snapshot" && Array.isArray(message.agents)) {
      for (const entry of message.agents as { agent_id?: unknown; status?: unknown }[]) {
        if (typeof entry?.agent_id === "string" && (entry.status === "online" || entry.status === "offline")) {
          this.handlers.presence?.({ type: "presence", agent_id: entry.agent_id, status: entry.status });
        }
      }
    }
  }

  protected override disconnected(): void {
    // Every command in flight, accepted or not, and also one whose acceptance was handled but
    // whose sendCommand has not resumed yet.
    const failing = [...this.commands.values()];
    this.commands.clear();
    for (const fail of failing) fail(new ConnectionLost("the session closed before the result: its outcome is unknown"));
  }
}
