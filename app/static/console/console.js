// The hub's operator console: plain JavaScript, no build step, no dependencies.
// Everything received from the hub is shown with textContent (never innerHTML).
// The token is kept in memory only (never in storage, never in a URL); it travels as the
// WebSocket subprotocol "bearer.<jwt>" next to "hub.v1", because a browser cannot set headers.
"use strict";

(() => {
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
    agentIds: $("agent-ids"), commandForm: $("command-form"), commandAgent: $("command-agent"),
    commandPayload: $("command-payload"), send: $("send"), commandStatus: $("command-status"),
    commandResult: $("command-result"), events: $("events"),
  };

  const MAX_EVENTS = 200;
  let ws = null;           // the live WebSocket
  let token = "";          // the token of the session (memory only)
  let welcome = null;      // the welcome message of the session
  let expiresAt = null;    // Unix seconds
  let wantOpen = false;    // the operator asked to be connected
  let retries = 0;
  let retryTimer = null;
  let nextId = 1;
  const agents = new Map();        // agent_id -> {status, last}
  const pendingRefresh = new Set(); // ids of auth.refresh in flight
  const commands = new Map();      // our id -> {agent, commandId}

  function notice(text, kind) {
    ui.notice.textContent = text;
    ui.notice.className = kind || "";
  }

  function setStatus(state) {
    ui.status.textContent = state;
    ui.status.className = "badge " + state;
    const open = state === "connected";
    ui.send.disabled = !open;
    ui.disconnect.disabled = !wantOpen;
    ui.connect.textContent = open ? "Refresh token" : "Connect";
    ui.token.placeholder = open ? "Paste a new token here to refresh the session" : "Paste a token here";
  }

  function describe(code, reason) {
    if (reason && WORDS[reason]) return WORDS[reason];
    if (CODE_WORDS[code]) return CODE_WORDS[code];
    return "The connection closed (code " + code + (reason ? ", " + reason : "") + ").";
  }

  function send(message) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  // --- connecting -----------------------------------------------------------------------------

  function hubUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + "/ws/dashboard";
  }

  function open() {
    clearTimeout(retryTimer);
    retryTimer = null;
    let socket;
    try {
      socket = new WebSocket(hubUrl(), ["hub.v1", "bearer." + token]);
    } catch (err) {
      // A token with characters a subprotocol cannot carry is not a JWT anyway.
      wantOpen = false;
      setStatus("disconnected");
      notice(WORDS.token_malformed, "bad");
      return;
    }
    ws = socket;
    setStatus("connecting");
    socket.onmessage = (e) => {
      if (socket !== ws || typeof e.data !== "string") return;
      let message;
      try { message = JSON.parse(e.data); } catch (err) { return; }
      if (message && typeof message.type === "string") handle(message);
    };
    socket.onclose = (e) => {
      if (socket !== ws) return;
      ws = null;
      welcome = null;
      expiresAt = null;
      ui.who.textContent = "";
      for (const entry of agents.values()) entry.status = "unknown";
      renderAgents();
      closed(e.code, e.reason);
    };
  }

  // The reconnect policy by close code (docs/clients.md).
  function closed(code, reason) {
    const text = describe(code, reason);
    if (!wantOpen) { setStatus("disconnected"); notice(code === 1000 ? "Disconnected." : text); return; }
    let delay = null;
    if (code === 1012) {
      delay = Math.random() * 250;                       // restart: at once, a little jitter
    } else if (code === 4401 || code === 4403 || reason === "connection_limit") {
      delay = null;                                      // a new token or a person is needed
    } else {
      const floor = code === 1013 ? 5000 : (code === 4429 ? 5000 : 0);
      const ceiling = Math.min(30000, 1000 * 2 ** retries);
      delay = Math.max(floor, ceiling * (0.5 + Math.random() / 2));
    }
    if (delay === null) {
      wantOpen = false;
      setStatus("disconnected");
      notice(text, "bad");
      ui.token.focus();
      return;
    }
    retries += 1;
    setStatus("connecting");
    notice(text + " (retry in " + Math.round(delay / 1000) + " s)", "bad");
    retryTimer = setTimeout(open, delay);
  }

  function takeToken() {
    const value = ui.token.value.trim();
    ui.token.value = "";
    return value;
  }

  ui.tokenForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const value = takeToken();
    if (!value) { notice("Paste a token first.", "bad"); return; }
    if (ws && ws.readyState === WebSocket.OPEN && welcome) {
      refresh(value);
      return;
    }
    if (ws) { const old = ws; ws = null; old.close(1000); }
    token = value;
    wantOpen = true;
    retries = 0;
    notice("Connecting…");
    open();
  });

  // Pasting a new token while connected refreshes the session in-band at once.
  ui.token.addEventListener("paste", () => {
    setTimeout(() => {
      if (ws && ws.readyState === WebSocket.OPEN && welcome && ui.token.value.trim()) {
        refresh(takeToken());
      }
    }, 0);
  });

  ui.disconnect.addEventListener("click", () => {
    wantOpen = false;
    clearTimeout(retryTimer);
    if (ws) ws.close(1000); else setStatus("disconnected");
  });

  function refresh(value) {
    const id = "r-" + nextId++;
    pendingRefresh.add(id);
    token = value;  // later reconnects use the newest token
    send({ type: "auth.refresh", token: value, id });
    notice("Refreshing the token…");
  }

  // --- messages -------------------------------------------------------------------------------

  function handle(m) {
    switch (m.type) {
      case "welcome":
        welcome = m;
        expiresAt = m.expires_at;
        retries = 0;
        setStatus("connected");
        ui.status.dataset.connection = String(m.connection_id);
        ui.who.textContent = m.sub + " (" + (Array.isArray(m.roles) ? m.roles.join(", ") : "") + ")" +
          (m.tenant ? " · tenant " + m.tenant : "");
        notice("Connected.", "ok");
        send({ type: "subscribe", agents: "*", id: "s-" + nextId++ });
        break;
      case "auth.expiring":
        notice("Your token expires in " + m.seconds_left + " s — paste a new one to stay connected.", "bad");
        break;
      case "auth.refreshed":
        pendingRefresh.delete(m.ref);
        expiresAt = m.expires_at;
        notice("Token refreshed — the session goes on until " + new Date(m.expires_at * 1000).toLocaleTimeString() + ".", "ok");
        break;
      case "presence":
        upsert(m.agent_id).status = m.status;
        renderAgents();
        break;
      case "presence.snapshot":
        // A large subscription's statuses, batched: one render per batch.
        for (const a of m.agents) upsert(a.agent_id).status = a.status;
        renderAgents();
        break;
      case "event": {
        upsert(m.agent_id).last = m.payload;
        renderAgents();
        addEvent(m.agent_id, m.payload);
        break;
      }
      case "command.accepted": {
        const c = commands.get(m.ref);
        if (c) {
          c.commandId = m.command_id;
          ui.commandStatus.textContent = "Accepted by the hub (command " + m.command_id + "); waiting for the agent…";
        }
        break;
      }
      case "result": {
        for (const [id, c] of commands) {
          if (c.commandId === m.command_id) {
            commands.delete(id);
            ui.commandStatus.textContent = "Result from " + m.agent_id + " (command " + m.command_id + "):";
            ui.commandResult.textContent = JSON.stringify(m.payload, null, 2);
          }
        }
        break;
      }
      case "error":
        if (pendingRefresh.has(m.ref)) {
          pendingRefresh.delete(m.ref);
          notice("The new token was refused: " + (WORDS[m.error] || m.error) + " The session goes on under the old token until it expires.", "bad");
        } else if (commands.has(m.ref)) {
          commands.delete(m.ref);
          ui.commandStatus.textContent = "Refused: " + (WORDS[m.error] || m.error);
          ui.commandResult.textContent = "";
        } else {
          notice(WORDS[m.error] || String(m.message || m.error), "bad");
        }
        break;
      default:
        break;
    }
  }

  function upsert(id) {
    let entry = agents.get(id);
    if (!entry) { entry = { status: "unknown", last: undefined }; agents.set(id, entry); }
    return entry;
  }

  function renderAgents() {
    const rows = [];
    const options = [];
    for (const id of [...agents.keys()].sort()) {
      const entry = agents.get(id);
      const tr = document.createElement("tr");
      tr.dataset.agent = id;
      const name = document.createElement("td");
      name.textContent = id;
      const status = document.createElement("td");
      status.textContent = entry.status;
      status.className = entry.status === "online" ? "online" : "offline";
      const last = document.createElement("td");
      const code = document.createElement("code");
      code.textContent = entry.last === undefined ? "" : JSON.stringify(entry.last);
      last.append(code);
      tr.append(name, status, last);
      rows.push(tr);
      const option = document.createElement("option");
      option.value = id;
      options.push(option);
    }
    ui.agents.replaceChildren(...rows);
    ui.agentIds.replaceChildren(...options);
    if (!ui.commandAgent.value && rows.length) ui.commandAgent.value = [...agents.keys()].sort()[0];
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

  // --- commands -------------------------------------------------------------------------------

  ui.commandForm.addEventListener("submit", (e) => {
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
    const id = "c-" + nextId++;
    commands.set(id, { agent: agentId, commandId: null });
    ui.commandResult.textContent = "";
    if (send({ type: "command", agent_id: agentId, payload, id })) {
      ui.commandStatus.textContent = "Sent to " + agentId + "…";
    } else {
      commands.delete(id);
      ui.commandStatus.textContent = "Not connected.";
    }
  });

  // --- the expiry countdown -------------------------------------------------------------------

  setInterval(() => {
    if (expiresAt === null) { ui.expiry.textContent = ""; return; }
    const left = Math.max(0, Math.round(expiresAt - Date.now() / 1000));
    ui.expiry.textContent = "token expires in " + left + " s";
  }, 1000);

  setStatus("disconnected");
})();
