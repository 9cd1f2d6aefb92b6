// The client against a real hub: commands, typed errors, final refusals, 4401, in-band refresh.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import {
  AgentClient, AgentOffline, DashboardClient, Forbidden, HubTimeoutError, SessionTerminated,
} from "../dist/index.js";
import { env, mint, next, provider, sleep, until, WebSocket } from "./support.mjs";

const HUB = env("HUB_URL");
const clients = [];
function track(client) { clients.push(client); return client; }
after(() => { for (const c of clients) c.close(); });

const OPERATOR = ["dashboard", "operator"];

test("a command round trip, and presence and events of the subscribed agent", async () => {
  const agent = track(new AgentClient({
    url: HUB, WebSocket, getToken: provider("js-agent-1", ["agent"]),
    onCommand: async (commandId, from, payload) => ({ echo: payload, from, commandId }),
  }));
  const dash = track(new DashboardClient({ url: HUB, WebSocket, getToken: provider("js-op-1", OPERATOR) }));
  const welcome = await dash.connect();
  assert.equal(welcome.sub, "js-op-1");
  assert.equal(dash.state, "connected");
  const presence = [];
  const events = [];
  const confirmed = await dash.subscribe(["js-agent-1"], { presence: (p) => presence.push(p), event: (e) => events.push(e) });
  assert.deepEqual(confirmed, ["js-agent-1"]);
  await agent.connect();
  await until(() => presence.some((p) => p.agent_id === "js-agent-1" && p.status === "online"), "the agent online");
  agent.emitEvent({ cpu: 0.5 });
  await until(() => events.length === 1, "the event");
  assert.equal(events[0].agent_id, "js-agent-1");
  assert.deepEqual(events[0].payload, { cpu: 0.5 });
  const result = await dash.sendCommand("js-agent-1", { op: "hello" }, { timeout: 10_000 });
  assert.equal(result.from, "js-op-1");
  assert.deepEqual(result.echo, { op: "hello" });
  agent.close();
  await until(() => presence.some((p) => p.agent_id === "js-agent-1" && p.status === "offline"), "the agent offline");
});

test("typed errors: agent_offline, forbidden (no operator role), and a timeout", async () => {
  const dash = track(new DashboardClient({ url: HUB, WebSocket, getToken: provider("js-op-2", OPERATOR) }));
  await dash.connect();
  await assert.rejects(dash.sendCommand("js-nobody", {}), (error) => error instanceof AgentOffline && error.code === "agent_offline");
  const viewer = track(new DashboardClient({ url: HUB, WebSocket, getToken: provider("js-viewer", ["dashboard"]) }));
  await viewer.connect();
  await assert.rejects(viewer.sendCommand("js-nobody", {}), (error) => error instanceof Forbidden && error.code === "forbidden");
  // An agent that never answers: the command is accepted, the result never comes.
  const mute = track(new AgentClient({
    url: HUB, WebSocket, getToken: provider("js-mute", ["agent"]), onCommand: () => new Promise(() => {}),
  }));
  await mute.connect();
  await assert.rejects(dash.sendCommand("js-mute", {}, { timeout: 1_000 }), (error) => error instanceof HubTimeoutError && error.code === "timeout");
});

test("a final refusal (4403 role_forbidden) stops the client: no reconnect, one token asked", async () => {
  const getToken = provider("js-agent-as-dash", ["agent"]);
  const dash = track(new DashboardClient({ url: HUB, WebSocket, getToken, backoff: { base: 50, cap: 100 } }));
  const terminated = next(dash, "terminated");
  await assert.rejects(dash.connect(), (error) => error instanceof SessionTerminated
    && error.closeCode === 4403 && error.code === "role_forbidden");
  assert.equal((await terminated).code, "role_forbidden");
  assert.equal(dash.state, "closed");
  await sleep(500); // many backoff periods
  assert.equal(getToken.calls, 1);
  assert.equal(dash.lastClose.delay, null);
});

test("4401 at the handshake backs off and gives up after maxAuthFailures", async () => {
  const getToken = provider("js-expired", OPERATOR, -30);
  const closes = [];
  const dash = track(new DashboardClient({ url: HUB, WebSocket, getToken, maxAuthFailures: 3, backoff: { base: 50, cap: 100 } }));
  dash.on("close", (info) => closes.push(info));
  await assert.rejects(dash.connect(), (error) => error instanceof SessionTerminated && error.code === "token_expired"
    && error.closeCode === 4401);
  assert.equal(getToken.calls, 3);
  assert.deepEqual(closes.map((c) => [c.code, c.reason, c.delay === null]), [
    [4401, "token_expired", false], [4401, "token_expired", false], [4401, "token_expired", true],
  ]);
});

test("a live session closed 4401 token_expired reconnects at once with a new token from getToken", async () => {
  const getToken = provider("js-short", OPERATOR, 2);
  const dash = track(new DashboardClient({ url: HUB, WebSocket, getToken, refresh: false }));
  const first = await dash.connect();
  const close = await next(dash, "close", 10_000);
  assert.deepEqual([close.code, close.reason, close.established, close.delay], [4401, "token_expired", true, 0]);
  const second = await next(dash, "welcome", 10_000);
  assert.notEqual(second.connection_id, first.connection_id);
  assert.equal(getToken.calls, 2);
  assert.ok(second.expires_at > first.expires_at);
});

test("in-band refresh keeps one connection alive across several token lifetimes", async () => {
  // This hub warns 1 s before expiry; each token lives 3 s.
  const url = env("HUB_REFRESH_URL");
  const getToken = provider("js-refresher", OPERATOR, 3);
  const dash = track(new DashboardClient({ url, WebSocket, getToken }));
  const closes = [];
  dash.on("close", (c) => closes.push(c));
  const welcome = await dash.connect();
  await until(() => dash.refreshes >= 4, "four refreshes", 20_000);
  assert.ok(Date.now() / 1000 > welcome.expires_at + 4, "past several lifetimes of the first token");
  assert.deepEqual(closes, []);
  assert.equal(dash.sessions, 1);
  assert.equal(dash.welcome.connection_id, welcome.connection_id);
  await dash.ping();
  assert.ok(dash.expiresAt > welcome.expires_at);
});

test("a refused refresh is reported typed and the session goes on", async () => {
  let calls = 0;
  const getToken = async () => (calls++ === 0 ? mint("js-badrefresh", OPERATOR) : mint("js-badrefresh", OPERATOR, -30));
  const dash = track(new DashboardClient({ url: HUB, WebSocket, getToken }));
  await dash.connect();
  await assert.rejects(dash.refresh(), (error) => error.code === "token_expired" && error.name === "RefreshRefused");
  await dash.ping();
  assert.equal(dash.state, "connected");
});

test("a token shorter-lived than the hub's warning time does not start a refresh loop", async () => {
  // The shared hub warns 60 s before expiry: every refreshed 30 s token is warned at once.
  const getToken = provider("js-loop", OPERATOR, 30);
  const dash = track(new DashboardClient({ url: HUB, WebSocket, getToken, minRefreshInterval: 1_000 }));
  await dash.connect();
  await until(() => dash.refreshes >= 1, "the first refresh");
  await sleep(2_500);
  // At most one refresh per second (without the guard: one per round trip, hundreds).
  assert.ok(dash.refreshes <= 5, `${dash.refreshes} refreshes`);
  assert.equal(dash.sessions, 1);
});
