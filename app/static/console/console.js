// The hub's operator console, built on the TypeScript client (clients/js, bundled into
// hub-client.js next to this file): the client does the connection, the subprotocol transport,
// refresh and reconnect policy; this page only decides what the operator sees and when to stop.
// Everything received from the hub is shown with textContent (never as HTML). The token is kept
// in memory only (never in storage, never in a URL).
import { CommandError, ConnectionLost, DashboardClient, HubTimeoutError, NotConnected } from "./hub-client.js";

// What each close reason / error code means for the person at the console.
const WORDS = {
  token_missing: "No token was sent — paste a token and connect.",
  token_malformed: "That is not a well-formed token — check what you pasted.",
  token_invalid: "The hub does not accept this token (signature, algorithm or key) — paste a token issued for this hub.",
  token_expired: "Your token has expired — paste a new one.",
  token_not_yet_valid: "Your token is not valid yet — check the clocks, or wait and retry.",
  claims_invalid: "The token's claims are missing or wrong (sub, exp, roles, issuer or audience) — get a proper token.",
  token_revoked: "This token has been revoked — ask your administrator for a new one.",
  role_forbidden: "Your token's roles do not allow the dashboard — it needs the dashboard role (and not agent).",
  origin_forbidden: "This page's origin is not allowed to connect to the hub.",
  ip_banned: "Your address is banned by the hub — contact an administrator.",
  kicked: "An administrator disconnected you.",
  identity_changed: "The new token is for another user, so the hub closed the session — connect again with it.",
  connection_limit: "You already have the maximum number of connections open — close another one (another tab?) first.",
  rate_limited: "Too many attempts or messages — slow down; retrying later.",
  unavailable: "The hub cannot reach its shared state — retrying shortly.",
  unsupported_data: "The console sent a binary frame (a bug) — reconnecting.",
  message_too_big: "A message was over the hub's size limit.",
  slow_consumer: "The console did not read its messages fast enough — reconnecting.",
  service_restart: "The hub server is restarting — reconnecting.",
  forbidden: "Not allowed — sending commands needs the operator role.",
  agent_offline: "The agent is not connected.",
  invalid_message: "The hub refused the message: a field has the wrong shape.",
  unknown_type: "The hub does not know this message type.",
};
// When a close carries no known reason, its code alone.
const CODE_WORDS = {
  1000: "Disconnected.",
  1001: "The hub went away — reconnecting.",
  1003: WORDS.unsupported_data,
  1006: "The connection was lost or refused (network, a banned address, or too many attempts from it) — retrying.",
  1009: WORDS.message_too_big,
  1011: "The hub failed — reconnecting.",
  1012: WORDS.service_restart,
  1013: WORDS.unavailable,
  4401: "Your token was refused — paste a new one.",
  4403: "The hub refused this session — do not retry; contact an administrator.",
  4408: WORDS.slow_consumer,
  4429: WORDS.rate_limited,
};

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), who: $("who"), expiry: $("expiry"), tokenForm: $("token-form"), token: $("token"),
  connect: $("connect"), disconnect: $("disconnect"), notice: $("notice"), agents: $("agents").tBodies[0],
  agentCount: $("agent-count"), agentIds: $("agent-ids"), commandForm: $("command-form"),
  commandAgent: $("command-agent"), commandPayload: $("command-payload"), send: $("send"),
  commandStatus: $("command-status"), commandResult: $("command-result"), events: $("events"),
};

const MAX_EVENTS = 200;
let client = null;      // the DashboardClient of the current session (one per pasted token)
let token = "";         // the token the client presents (memory only)
const agents = new Map(); // agent_id -> {status, last, row}
const dirty = new Set();  // agent ids whose row must be redrawn
let added = false;        // new agents: rows must be re-sorted
let renderQueued = false;

function notice(text, kind) {
  ui.notice.textContent = text;
  ui.notice.className = kind || "";
}

function describe(code, reason) {
  if (reason && WORDS[reason]) return WORDS[reason];
  if (CODE_WORDS[code]) return CODE_WORDS[code];
  return "The connection closed (code " + code + (reason ? ", " + reason : "") + ").";
}

function setStatus(state) {
  const shown = state === "connected" ? "connected" : state === "connecting" ? "connecting" : "disconnected";
  ui.status.textContent = shown;
  ui.status.className = "badge " + shown;
  const open = shown === "connected";
  ui.send.disabled = !open;
  ui.disconnect.disabled = shown === "disconnected";
  ui.connect.textContent = open ? "Refresh token" : "Connect";
  ui.token.placeholder = open ? "Paste a new token here to refresh the session" : "Paste a token here";
  if (!open) {
    ui.who.textContent = "";
    for (const [id, entry] of agents) { entry.status = "unknown"; dirty.add(id); }
    queueRender();
  }
}

// --- connecting ---------------------------------------------------------------------------------

function hubUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return scheme + "//" + location.host + "/ws/dashboard";
}

function start(value) {
  if (client) client.close();
  token = value;
  const session = new DashboardClient({
    url: hubUrl(),
    getToken: () => token,
    // The console has no token source of its own: the operator pastes the next one.
    refresh: false,
    maxAuthFailures: 1,
  });
  client = session;
  let subscribed = false;
  session.on("state", (state) => { if (client === session) setStatus(state); });
  session.on("welcome", (welcome) => {
    ui.status.dataset.connection = String(welcome.connection_id);
    ui.who.textContent = welcome.sub + " (" + welcome.roles.join(", ") + ")" + (welcome.tenant ? " · tenant " + welcome.tenant : "");
    notice("Connected.", "ok");
    if (!subscribed) {
      subscribed = true;  // the client re-sends it after every reconnect
      session.subscribe("*", { presence: onPresence, event: onEvent, recovered: onRecovered }).catch((error) => {
        notice("Subscribing failed: " + (WORDS[error.code] || error.message), "bad");
      });
    }
  });
  session.on("expiring", (m) => {
    notice("Your token expires in " + m.seconds_left + " s — paste a new one to stay connected.", "bad");
  });
  session.on("close", (info) => {
    if (client !== session) return;
    ui.status.dataset.close = String(info.code ?? info.status ?? "") + " " + info.reason;
    const text = describe(info.code, info.reason);
    // A new token (4401) or a person (connection_limit) is needed: stop and wait for the operator.
    if (info.delay === null || info.code === 4401 || info.reason === "connection_limit") {
      session.close();
      notice(text, "bad");
      ui.token.focus();
      return;
    }
    notice(text + " (retry in " + Math.round(info.delay / 1000) + " s)", "bad");
  });
  notice("Connecting…");
  // Final refusals arrive as a "close" event too; the promise only reports the first session.
  session.connect().catch(() => {});
}

function takeToken() {
  const value = ui.token.value.trim();
  ui.token.value = "";
  return value;
}

async function refresh(value) {
  const session = client;
  const previous = token;
  token = value;  // getToken answers with it: for this refresh and later reconnects
  notice("Refreshing the token…");
  try {
    const expiresAt = await session.refresh();
    notice("Token refreshed — the session goes on until " + new Date(expiresAt * 1000).toLocaleTimeString() + ".", "ok");
  } catch (error) {
    if (client === session) token = previous;
    notice("The new token was refused: " + (WORDS[error.code] || error.message) + " The session goes on under the old token until it expires.", "bad");
  }
}

ui.tokenForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const value = takeToken();
  if (!value) { notice("Paste a token first.", "bad"); return; }
  if (client && client.state === "connected") { refresh(value); return; }
  start(value);
});

// Pasting a new token while connected refreshes the session in-band at once.
ui.token.addEventListener("paste", () => {
  setTimeout(() => {
    if (client && client.state === "connected" && ui.token.value.trim()) refresh(takeToken());
  }, 0);
});

ui.disconnect.addEventListener("click", () => {
  if (client) client.close();
  setStatus("closed");
  notice("Disconnected.");
});

// --- agents and events: drawn at most once per frame, so 1,000 presences cost one layout -------

function upsert(id) {
  let entry = agents.get(id);
  if (!entry) {
    entry = { status: "unknown", last: undefined, row: null };
    agents.set(id, entry);
    added = true;
  }
  dirty.add(id);
  return entry;
}

function onPresence(p) {
  upsert(p.agent_id).status = p.status;
  queueRender();
}

// After a reconnect the client asks for the events missed meanwhile (`since`); the hub says per
// agent whether all of them could be replayed. When not, the operator must know that the shown
// state of those agents may be stale.
function onRecovered(recovered) {
  const lost = Object.keys(recovered).filter((agent) => recovered[agent] === false).sort();
  ui.status.dataset.unrecovered = lost.join(",");
  if (lost.length) {
    notice("Reconnected, but some events of " + lost.slice(0, 5).join(", ") + (lost.length > 5 ? " and " + (lost.length - 5) + " more" : "")
      + " were missed for good (the hub no longer holds them): what is shown for them may be out of date.", "bad");
  } else if (Object.keys(recovered).length) {
    notice("Reconnected: every missed event was recovered.", "ok");
  }
}

function onEvent(m) {
  upsert(m.agent_id).last = m.payload;
  queueRender();
  addEvent(m.agent_id, m.payload);
}

function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(render, 16);
}

function drawRow(id, entry) {
  if (!entry.row) {
    const tr = document.createElement("tr");
    tr.dataset.agent = id;
    const name = document.createElement("td");
    name.textContent = id;
    tr.append(name, document.createElement("td"), document.createElement("td"));
    tr.cells[2].append(document.createElement("code"));
    entry.row = tr;
  }
  const status = entry.row.cells[1];
  status.textContent = entry.status;
  status.className = entry.status === "online" ? "online" : "offline";
  entry.row.cells[2].firstChild.textContent = entry.last === undefined ? "" : JSON.stringify(entry.last);
}

function render() {
  renderQueued = false;
  for (const id of dirty) drawRow(id, agents.get(id));
  dirty.clear();
  if (added) {
    added = false;
    const ids = [...agents.keys()].sort();
    ui.agents.replaceChildren(...ids.map((id) => agents.get(id).row));
    ui.agentIds.replaceChildren(...ids.map((id) => { const o = document.createElement("option"); o.value = id; return o; }));
    if (!ui.commandAgent.value && ids.length) ui.commandAgent.value = ids[0];
  }
  let online = 0;
  for (const entry of agents.values()) if (entry.status === "online") online += 1;
  ui.agentCount.textContent = online + " online of " + agents.size;
}

function addEvent(agentId, payload) {
  const li = document.createElement("li");
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = new Date().toLocaleTimeString() + " ";
  const agent = document.createElement("span");
  agent.className = "agent";
  agent.textContent = agentId + " ";
  const body = document.createElement("code");
  body.textContent = JSON.stringify(payload);
  li.append(time, agent, body);
  ui.events.prepend(li);
  while (ui.events.childElementCount > MAX_EVENTS) ui.events.lastElementChild.remove();
}

// --- commands -----------------------------------------------------------------------------------

ui.commandForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const agentId = ui.commandAgent.value.trim();
  if (!agentId) { ui.commandStatus.textContent = "Choose an agent."; return; }
  let payload;
  try {
    payload = ui.commandPayload.value.trim() ? JSON.parse(ui.commandPayload.value) : null;
  } catch (err) {
    ui.commandStatus.textContent = "The payload is not valid JSON.";
    return;
  }
  ui.commandResult.textContent = "";
  if (!client) { ui.commandStatus.textContent = "Not connected."; return; }
  ui.commandStatus.textContent = "Sent to " + agentId + "…";
  try {
    const result = await client.sendCommand(agentId, payload, { timeout: 60_000 });
    ui.commandStatus.textContent = "Result from " + agentId + ":";
    ui.commandResult.textContent = JSON.stringify(result, null, 2);
  } catch (error) {
    if (error instanceof CommandError) ui.commandStatus.textContent = "Refused: " + (WORDS[error.code] || error.message);
    else if (error instanceof ConnectionLost) ui.commandStatus.textContent = "The session closed before the result: its outcome is unknown.";
    else if (error instanceof HubTimeoutError) ui.commandStatus.textContent = "No result within a minute.";
    else if (error instanceof NotConnected) ui.commandStatus.textContent = "Not connected.";
    else ui.commandStatus.textContent = "Failed: " + String(error);
  }
});

// --- the expiry countdown -----------------------------------------------------------------------

setInterval(() => {
  const expiresAt = client ? client.expiresAt : null;
  if (expiresAt === null) { ui.expiry.textContent = ""; return; }
  const left = Math.max(0, Math.round(expiresAt - Date.now() / 1000));
  ui.expiry.textContent = "token expires in " + left + " s";
}, 1000);

setStatus("closed");
