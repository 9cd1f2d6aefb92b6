// The AsyncAPI document (served and committed) is valid AsyncAPI 3.0, and the client's message
// types and the console's bundle are what the generators make from the current sources.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { Parser } from "@asyncapi/parser";
import { env } from "./support.mjs";

const ERROR = 0;
const WARNING = 1;

async function validate(text) {
  const { document, diagnostics } = await new Parser().parse(text);
  const serious = diagnostics.filter((d) => d.severity === ERROR || d.severity === WARNING);
  assert.deepEqual(serious.map((d) => `${d.code} ${d.message} at ${JSON.stringify(d.path)}`), []);
  assert.ok(document, "the parser returned no document");
  return document;
}

test("the served /asyncapi.json is valid AsyncAPI 3.0 and describes both endpoints", async () => {
  const response = await fetch(`${env("HUB_HTTP")}/asyncapi.json`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type"), /^application\/json/);
  const document = await validate(await response.text());
  assert.equal(document.version(), "3.0.0");
  const addresses = document.channels().all().map((c) => c.address()).sort();
  assert.deepEqual(addresses, ["/ws/agent", "/ws/dashboard"]);
  // Requests and answers are tied by id/ref.
  const command = document.components().messages().all().find((m) => m.id() === "CommandMessage" || m.name() === "command");
  assert.ok(command);
  const replies = document.operations().all().filter((o) => o.reply());
  assert.ok(replies.length >= 8);
});

test("the committed docs/asyncapi.json is valid AsyncAPI 3.0", async () => {
  await validate(readFileSync("../../docs/asyncapi.json", "utf8"));
});

test("src/messages.ts is generated from docs/asyncapi.json (no drift)", () => {
  execFileSync(process.execPath, ["scripts/gen-messages.mjs", "../../docs/asyncapi.json", "src/messages.ts", "--check"], { stdio: "pipe" });
});

test("app/static/console/hub-client.js is the bundle of src/ (no drift)", () => {
  const esbuild = "node_modules/esbuild/bin/esbuild";
  const fresh = execFileSync(esbuild, ["src/index.ts", "--bundle", "--format=esm", "--target=es2020", "--legal-comments=none"], { encoding: "utf8" });
  const committed = readFileSync("../../app/static/console/hub-client.js", "utf8");
  assert.ok(committed === fresh, "the console's bundle is stale: run `npm run bundle` in clients/js");
});
