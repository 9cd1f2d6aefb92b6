// What the node tests share: hub URLs and the token key from the environment (set by
// tests/test_js_client.py, which starts the real hubs), HS256 minting, and waiting.
import { createHmac, randomUUID } from "node:crypto";
import WebSocket from "ws";

export { WebSocket };

/** An environment variable the pytest driver must set (the test fails without it). */
export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through tests/test_js_client.py`);
  return value;
}

const b64 = (data) => Buffer.from(data).toString("base64url");

/** An HS256 token signed with the hubs' key (what an identity provider would issue). */
export function mint(sub, roles, ttl = 300) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64(JSON.stringify({ sub, roles, iat: now, exp: now + ttl, jti: randomUUID() }));
  const signature = createHmac("sha256", env("HUB_TEST_SECRET")).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

/** A getToken that mints and counts its calls. */
export function provider(sub, roles, ttl = 300) {
  const get = async () => { get.calls += 1; return mint(sub, roles, ttl); };
  get.calls = 0;
  return get;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves once `predicate()` is truthy; rejects after `timeout` ms saying what it waited for. */
export async function until(predicate, what, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/** The first `name` event of `client` (rejects after `timeout` ms). */
export function next(client, name, timeout = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`no ${name} event within ${timeout} ms`)); }, timeout);
    const off = client.on(name, (value) => { clearTimeout(timer); off(); resolve(value); });
  });
}
