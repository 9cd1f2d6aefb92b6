// An HTTP refusal (here the per-address rate limit, always HTTP) is readable in Node: its
// Retry-After is a floor of the next delay.
import assert from "node:assert/strict";
import { test } from "node:test";
import { DashboardClient } from "../dist/index.js";
import { env, next, provider, WebSocket } from "./support.mjs";

test("a 429 with Retry-After delays the next attempt by at least that long", async () => {
  const url = env("HUB_URL");
  const first = new DashboardClient({ url, WebSocket, getToken: provider("js-ra-1", ["dashboard"]) });
  const second = new DashboardClient({ url, WebSocket, getToken: provider("js-ra-2", ["dashboard"]), backoff: { base: 10, cap: 20 } });
  try {
    await first.connect(); // the address's only attempt this minute
    const close = next(second, "close");
    second.connect().catch(() => {});
    const info = await close;
    assert.deepEqual([info.status, info.code, info.reason, info.action], [429, null, "rate_limited", "backoff"]);
    // The backoff alone would be ≤ 20 ms; the hub's Retry-After (seconds) is the floor.
    assert.ok(info.delay >= 1000, `delay ${info.delay} ms`);
    assert.equal(second.state, "connecting");
  } finally {
    first.close();
    second.close();
  }
});
