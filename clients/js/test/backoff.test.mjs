// The reconnect schedule and the policy by close code (pure; mirrors hubclient/backoff.py).
import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff, decideClose, decideStatus, parseRetryAfter } from "../dist/index.js";

test("delays double to the cap, drawn in [(1 - jitter)·d, d]", () => {
  const exact = new Backoff({ base: 500, cap: 4_000, jitter: 0 });
  assert.deepEqual([0, 1, 2, 3, 4, 5].map(() => exact.next()), [500, 1_000, 2_000, 4_000, 4_000, 4_000]);
  const low = new Backoff({ base: 500, cap: 4_000, jitter: 0.5, random: () => 0.999999 });
  assert.ok(Math.abs(low.next() - 250) < 0.01);
  exact.reset();
  assert.equal(exact.next(), 500);
});

test("a Retry-After is a floor, spread by up to jitter/4 of it", () => {
  const b = new Backoff({ base: 10, cap: 20, jitter: 0.5, random: () => 1 });
  assert.equal(b.next(60_000), 60_000 * 1.125);
  assert.equal(parseRetryAfter("7"), 7_000);
  assert.equal(parseRetryAfter("Wed, 21 Oct 2026 07:28:00 GMT"), null);
});

test("the policy by close code and HTTP status", () => {
  assert.equal(decideClose(4401).action, "new_token");
  assert.equal(decideClose(4403).action, "stop");
  assert.equal(decideClose(1012).action, "reconnect_now");
  assert.deepEqual(decideClose(1013), { action: "backoff", retryAfter: null, minDelay: 5_000 });
  for (const code of [4429, 4408, 1006, 1000, 1011, null]) assert.equal(decideClose(code).action, "backoff");
  assert.equal(decideStatus(403, null).action, "stop");
  assert.equal(decideStatus(401, null).action, "new_token");
  assert.deepEqual(decideStatus(429, 3_000), { action: "backoff", retryAfter: 3_000, minDelay: 0 });
  assert.throws(() => new Backoff({ base: 0 }), RangeError);
});

test("a URL that is not ws:// or wss:// is refused at construction", async () => {
  const { DashboardClient } = await import("../dist/index.js");
  const WebSocket = class {};
  assert.throws(() => new DashboardClient({ url: "http://127.0.0.1:1", WebSocket, getToken: () => "t" }), TypeError);
  assert.throws(() => new DashboardClient({ url: [], WebSocket, getToken: () => "t" }), TypeError);
  const ok = new DashboardClient({ url: "ws://127.0.0.1:1", WebSocket, getToken: () => "t" });
  assert.equal(ok.url, "ws://127.0.0.1:1/ws/dashboard");
});
