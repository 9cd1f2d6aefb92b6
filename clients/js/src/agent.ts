// The agent client: answer commands with a handler, emit events.
import { HubClient } from "./client.js";
import type { ClientOptions } from "./options.js";
import type { CommandDeliveryMessage, JsonValue, ServerMessage } from "./messages.js";

/** `(commandId, fromSub, payload) => result payload`. A throw is answered
 * `{"error": "handler_failed", "exception": "<name>"}`. */
export type CommandHandler = (commandId: string, from: string, payload: JsonValue) => Promise<JsonValue> | JsonValue;

export interface AgentOptions extends ClientOptions {
  onCommand?: CommandHandler;
}

/** An agent on `/ws/agent`: each `command` is answered with a `result` on the same session. */
export class AgentClient extends HubClient {
  protected readonly endpoint = "/ws/agent";
  private readonly onCommand: CommandHandler | undefined;

  constructor(options: AgentOptions) {
    super(options);
    this.onCommand = options.onCommand;
  }

  /** Send an event to every dashboard subscribed to this agent; throws {@link NotConnected}. */
  emitEvent(payload: JsonValue): void {
    this.send({ type: "event", payload });
  }

  protected override handle(message: ServerMessage): void {
    if (message.type === "command") void this.answer(message);
  }

  private async answer(command: CommandDeliveryMessage): Promise<void> {
    let payload: JsonValue;
    try {
      payload = this.onCommand ? await this.onCommand(command.command_id, command.from, command.payload ?? null)
        : { error: "no_handler" };
    } catch (error) {
      payload = { error: "handler_failed", exception: error instanceof Error ? error.name : typeof error };
    }
    try { this.send({ type: "result", command_id: command.command_id, payload }); } catch { /* the hub drops it anyway */ }
  }
}
