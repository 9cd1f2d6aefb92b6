// Message forms this hub version does not send yet but the contract allows (v2): presence as
// `presence.snapshot`, and `seq`/`epoch` on events, replayed with `since` after a reconnect; and
// orderings a real hub produces only by chance: an `error` or the close right behind
// `command.accepted`. A scripted server on loopback plays the hub's part, so these tests pin the
// client's side alone.
import assert from "node:assert/strict";
import { test } from "node:test";
import { WebSocketServer } from "ws";
import { AgentOffline, ConnectionLost, DashboardClient } from "../dist/index.js";
import { mint, until, WebSocket } from "./support.mjs";

function scriptedHub(onMessage) {
  const server = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: (offered) => (offered.has("hub.v1") ? "hub.v1" : false) });
  const sockets = [];
  const offered = [];
  server.on("connection", (socket, request) => {
    sockets.push(socket);
    offered.push(request.headers["sec-websocket-protocol"]);
    socket.send(JSON.stringify({ type: "welcome", connection_id: `c${sockets.length}`, sub: "s", roles: ["dashboard"], tenant: null, expires_at: Math.floor(Date.now() / 1000) + 300 }));
    socket.on("message", (data) => onMessage(socket, JSON.parse(String(data)), sockets.length));
  });
  return new Promise((resolve) => server.on("listening", () => resolve({
    url: `ws://127.0.0.1:${server.address().port}`, sockets, offered, close: () => new Promise((r) => server.close(r)),
  })));
}

test("each entry of a presence.snapshot reaches the presence callback", async () => {
  const hub = await scriptedHub((socket, message) => {
    if (message.type !== "subscribe") return;
    socket.send(JSON.stringify({ type: "subscribed", agents: ["*"], ref: message.id }));
    socket.send(JSON.stringify({ type: "presence.snapshot", agents: [
      { agent_id: "a-1", status: "online" }, { agent_id: "a-2", status: "online" }, { agent_id: 3, status: "online" },
    ] }));
    socket.send(JSON.stringify({ type: "presence", agent_id: "a-1", status: "offline" }));
  });
  const dash = new DashboardClient({ url: hub.url, WebSocket, getToken: () => mint("s", ["dashboard"]) });
  try {
    await dash.connect();
    const seen = [];
    await dash.subscribe("*", { presence: (p) => seen.push(`${p.agent_id}:${p.status}`) });
    await until(() => seen.length === 3, "three presences");
    assert.deepEqual(seen, ["a-1:online", "a-2:online", "a-1:offline"]); // the malformed entry is dropped
    assert.match(hub.offered[0], /^hub\.v1, ?bearer\.[\w-]+\.[\w-]+\.[\w-]+$/); // the token's only transport
  } finally {
    dash.close();
    await hub.close();
  }
});

test("after a reconnect the subscription is re-sent with since: the last seq of each agent", async () => {
  const subscribes = [];
  const hub = await scriptedHub((socket, message, connection) => {
    if (message.type !== "subscribe") return;
    subscribes.push(message);
    socket.send(JSON.stringify({ type: "subscribed", agents: message.agents, ref: message.id }));
    if (connection === 1) {
      for (const seq of [1, 2, 3]) socket.send(JSON.stringify({ type: "event", agent_id: "a-1", payload: { n: seq }, seq, epoch: "e1" }));
    }
  });
  const dash = new DashboardClient({ url: hub.url, WebSocket, getToken: () => mint("s", ["dashboard"]), backoff: { base: 10, cap: 20 } });
  try {
    await dash.connect();
    const events = [];
    await dash.subscribe(["a-1", "a-2"], { event: (e) => events.push(e.seq) });
    await until(() => events.length === 3, "three events");
    assert.deepEqual(dash.positionsSeen, { "a-1": { epoch: "e1", seq: 3 } });
    hub.sockets[0].terminate(); // the connection is lost (1006)
    await until(() => subscribes.length === 2, "the subscription re-sent");
    assert.deepEqual(subscribes[1].agents, ["a-1", "a-2"]);
    assert.deepEqual(subscribes[1].since, { "a-1": { epoch: "e1", seq: 3 } });
    assert.equal(subscribes[0].since, undefined);
  } finally {
    dash.close();
    await hub.close();
  }
});

// What comes right behind `command.accepted` (in the same write, so the client reads both in one
// go) or a while after it ends the command at once, not at its timeout.
const afterAcceptance = [
  ["an error right behind", 0, (socket, ref) => socket.send(JSON.stringify({ type: "error", error: "agent_offline", message: "the agent disconnected", ref })), AgentOffline],
  ["an error a while after", 50, (socket, ref) => socket.send(JSON.stringify({ type: "error", error: "agent_offline", message: "the agent disconnected", ref })), AgentOffline],
  ["the session's close right behind", 0, (socket) => socket.close(1011, "gone"), ConnectionLost],
];
for (const [what, delay, follow, expected] of afterAcceptance) {
  test(`${what} command.accepted ends the command`, async () => {
    const hub = await scriptedHub((socket, message) => {
      if (message.type !== "command") return;
      const accepted = JSON.stringify({ type: "command.accepted", command_id: `k-${message.id}`, ref: message.id });
      if (delay === 0) {
        socket._socket.cork();
        socket.send(accepted);
        follow(socket, message.id);
        process.nextTick(() => socket._socket.uncork());
      } else {
        socket.send(accepted);
        setTimeout(() => follow(socket, message.id), delay);
      }
    });
    const dash = new DashboardClient({ url: hub.url, WebSocket, getToken: () => mint("s", ["dashboard", "operator"]) });
    try {
      await dash.connect();
      const started = Date.now();
      await assert.rejects(dash.sendCommand("a-1", null, { timeout: 5000 }), expected);
      assert.ok(Date.now() - started < 2000, "ended at once, not by the timeout");
    } finally {
      dash.close();
      await hub.close();
    }
  });
}
