// Compiled (not run) by tests/test_js_client.py: the public types narrow as a dashboard author
// expects. A type error here fails the test.
import {
  type CloseInfo, type DashboardServerMessage, DashboardClient, type JsonValue, SessionTerminated, AgentOffline,
} from "../src/index.js";

declare const hub: DashboardClient;

export function describe(message: DashboardServerMessage): string {
  switch (message.type) {
    case "presence": return `${message.agent_id} ${message.status}`;
    case "event": return `${message.agent_id} ${JSON.stringify(message.payload)}`;
    case "result": return message.command_id;
    case "error": return message.error;
    default: return message.type;
  }
}

export async function use(): Promise<JsonValue> {
  const off = hub.on("close", (info: CloseInfo) => { if (info.delay === null) off(); });
  hub.on("terminated", (error: SessionTerminated) => error.closeCode);
  await hub.subscribe("*", { presence: (p) => p.status satisfies "online" | "offline" });
  try {
    return await hub.sendCommand("agent-1", { op: "uptime" }, { timeout: 1000 });
  } catch (error) {
    if (error instanceof AgentOffline) return error.code;
    throw error;
  }
}
