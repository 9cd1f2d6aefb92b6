// 1012 service_restart: the client moves to the next URL at once.
import assert from "node:assert/strict";
import { test } from "node:test";
import { DashboardClient } from "../dist/index.js";
import { env, next, provider, WebSocket } from "./support.mjs";

test("1012 from a hub that shuts down fails over to the second hub", async () => {
  const [a, b] = [env("HUB_A_URL"), env("HUB_B_URL")];
  const getToken = provider("js-failover", ["dashboard"]);
  const dash = new DashboardClient({ url: [a, b], WebSocket, getToken, restartJitter: 100 });
  try {
    await dash.connect();
    assert.ok(dash.url.startsWith(a));
    await dash.subscribe("*");
    const close = next(dash, "close", 20_000);
    process.kill(Number(env("HUB_A_PID")), "SIGTERM");
    const info = await close;
    assert.deepEqual([info.code, info.reason, info.action], [1012, "service_restart", "reconnect_now"]);
    assert.ok(info.delay <= 100);
    const welcome = await next(dash, "welcome", 10_000);
    assert.ok(dash.url.startsWith(b), dash.url);
    assert.equal(welcome.sub, "js-failover");
    assert.equal(dash.sessions, 2);
    await dash.ping();
  } finally {
    dash.close();
  }
});
