// The browser test: the room example on 127.0.0.1 and a free port, two
// people (alice and bob) in two headless Chromium browsers of their own
// (Debian's /usr/bin/chromium, driven by playwright-core), each step
// screenshotted into test-output/.
//
//   node test/browser.mjs            (PRESENCE_ROOM_BIN: the example binary)
//
// The "within 2 s" bounds are the acceptance criteria of the web edge;
// each measured time is printed.

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const binary = process.env.PRESENCE_ROOM_BIN || join(root, "target/debug/examples/room");
const output = resolve(here, "../test-output");
const TTL_MS = 6000;
const HEARTBEAT_MS = 1000;

rmSync(output, { recursive: true, force: true });
mkdirSync(output, { recursive: true });
const scratch = mkdtempSync(join(tmpdir(), "presence-browser-"));

const results = [];
let server;
const browsers = [];

function log(...parts) {
  console.log(...parts);
}

/** Starts the example; resolves with its base URL. */
function startServer() {
  return new Promise((resolveUrl, reject) => {
    server = spawn(binary, [], {
      env: {
        ...process.env,
        PRESENCE_ADDR: "127.0.0.1:0",
        PRESENCE_STORE: `sqlite://${join(scratch, "room.db")}`,
        PRESENCE_TTL: `${TTL_MS}ms`,
        PRESENCE_HEARTBEAT: `${HEARTBEAT_MS}ms`,
      },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let seen = "";
    server.stdout.on("data", (chunk) => {
      seen += chunk;
      const match = seen.match(/open (http:\/\/127\.0\.0\.1:\d+)\//);
      if (match) resolveUrl(match[1]);
    });
    server.on("exit", (code) => reject(new Error(`the example exited (${code}): ${seen}`)));
    setTimeout(() => reject(new Error(`the example printed no URL: ${seen}`)), 30_000);
  });
}

/** A browser of its own (a fresh profile) for one person. */
async function browserFor(name) {
  const context = await chromium.launchPersistentContext(join(scratch, `profile-${name}`), {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
    viewport: { width: 900, height: 800 },
  });
  browsers.push(context);
  // Every event and answer the pages receive, to check what they hold.
  await context.addInitScript(() => {
    window.__received = [];
    const Native = window.EventSource;
    window.EventSource = class extends Native {
      constructor(url, options) {
        super(url, options);
        for (const type of ["state", "diff"]) {
          this.addEventListener(type, (event) => window.__received.push({ url: String(url), type, data: event.data }));
        }
      }
    };
  });
  return context;
}

async function open(context, base, path) {
  const page = await context.newPage();
  const answers = [];
  page.on("response", async (response) => {
    if (response.url().includes("/presence/") && !response.url().includes("/events")) {
      answers.push(response.text().then((body) => ({ url: response.url(), body })).catch(() => null));
    }
  });
  page.answers = answers;
  await page.goto(base + path);
  return page;
}

/** Polls `check` every 25 ms until it holds; the time it took, or throws after `limit` ms. */
async function within(limit, what, check) {
  const started = Date.now();
  for (;;) {
    if (await check()) return Date.now() - started;
    if (Date.now() - started > limit) throw new Error(`${what}: not within ${limit} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const roomMember = (page, id) =>
  page.evaluate((id) => {
    const item = document.querySelector(`#room-members li[data-member="${id}"]`);
    return item ? Number(item.dataset.connections) : 0;
  }, id);

async function step(name, body) {
  const started = Date.now();
  try {
    const note = await body();
    results.push({ name, ok: true });
    log(`ok   ${name}${note ? ` (${note})` : ""} [${Date.now() - started} ms]`);
  } catch (error) {
    results.push({ name, ok: false });
    log(`FAIL ${name}: ${error.stack || error}`);
  }
}

async function shot(page, name) {
  await page.screenshot({ path: join(output, `${name}.png`), fullPage: true });
}

async function main() {
  const base = await startServer();
  log(`the example is on ${base}`);
  const alice = await browserFor("alice");
  const bob = await browserFor("bob");
  const bobPage = await open(bob, base, "/login?user=bob");
  await within(10_000, "bob's page is ready", async () => (await bobPage.evaluate(() => window.presenceDemo?.room.members)) !== undefined);

  let aliceTab1;
  await step("alice enters: bob sees her within 2 s", async () => {
    const answered = alice.waitForEvent("response", { predicate: (r) => r.url().endsWith("/presence/update") }).catch(() => null);
    aliceTab1 = await open(alice, base, "/login?user=alice");
    await answered;
    const took = await within(2_000, "alice on bob's page", async () => (await roomMember(bobPage, "alice")) === 1);
    await shot(bobPage, "01-bob-sees-alice");
    return `${took} ms after alice's /update was answered`;
  });

  let aliceTab2;
  await step("alice opens a second tab: one member on two connections", async () => {
    aliceTab2 = await open(alice, base, "/");
    const took = await within(2_000, "two tabs", async () => (await roomMember(bobPage, "alice")) === 2);
    const items = await bobPage.locator('#room-members li[data-member="alice"]').count();
    if (items !== 1) throw new Error(`${items} entries for alice`);
    await shot(bobPage, "02-one-member-two-tabs");
    return `${took} ms`;
  });

  await step("alice types in one tab: bob sees her typing within 2 s, then not", async () => {
    const typed = Date.now();
    await aliceTab2.fill("#message", "hello");
    const typing = () => bobPage.locator('#room-members li[data-member="alice"] .typing').count();
    await within(2_000, "alice typing", async () => (await typing()) === 1);
    const took = Date.now() - typed;
    await shot(bobPage, "02b-alice-typing");
    // 3 s after the last key the meta goes back to not typing.
    await within(3_000 + 2_000, "alice stopped typing", async () => (await typing()) === 0);
    return `${took} ms after the first key`;
  });

  await step("alice closes one tab: she stays", async () => {
    await aliceTab2.close({ runBeforeUnload: true });
    const took = await within(2_000, "one tab", async () => (await roomMember(bobPage, "alice")) === 1);
    await new Promise((r) => setTimeout(r, 1_000));
    if ((await roomMember(bobPage, "alice")) !== 1) throw new Error("alice left with a tab still open");
    await shot(bobPage, "03-alice-stays");
    return `${took} ms to show one tab`;
  });

  await step("alice closes her last tab: bob sees her leave within 2 s (the beacon, the TTL is 6 s)", async () => {
    const closed = Date.now();
    await aliceTab1.close({ runBeforeUnload: true });
    await within(2_000, "alice gone", async () => (await roomMember(bobPage, "alice")) === 0);
    await shot(bobPage, "04-alice-left");
    return `${Date.now() - closed} ms after the tab closed`;
  });

  await step("alice's browser goes offline: she leaves after the TTL", async () => {
    const tab = await open(alice, base, "/");
    await within(2_000, "alice back", async () => (await roomMember(bobPage, "alice")) === 1);
    const offline = Date.now();
    await alice.setOffline(true);
    await within(TTL_MS * 3, "alice swept", async () => (await roomMember(bobPage, "alice")) === 0);
    const took = Date.now() - offline;
    if (took < TTL_MS - HEARTBEAT_MS - 500) throw new Error(`gone after ${took} ms, before the TTL`);
    await shot(bobPage, "05-offline-swept");
    await alice.setOffline(false);
    await tab.close({ runBeforeUnload: true });
    return `${took} ms after going offline (TTL ${TTL_MS} ms)`;
  });

  await step("alice's tab with onlyWhileActive leaves while hidden and idle, and comes back", async () => {
    const tab = await open(alice, base, "/?onlyWhileActive=1&idleMs=2500");
    await within(2_000, "alice in", async () => (await roomMember(bobPage, "alice")) === 1);
    // Headless Chromium shows every tab as visible: the page is told it
    // is hidden the way a browser tells it.
    await tab.evaluate(() => {
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
      document.dispatchEvent(new Event("visibilitychange"));
    });
    const hidden = await within(2_000 + 1_000, "alice left while hidden", async () => (await roomMember(bobPage, "alice")) === 0);
    await shot(bobPage, "06-hidden-tab-left");
    await tab.evaluate(() => {
      delete document.visibilityState;
      document.dispatchEvent(new Event("visibilitychange"));
    });
    await tab.mouse.move(10, 10);
    await tab.mouse.move(40, 40);
    const back = await within(2_000 + 1_000, "alice back when visible", async () => (await roomMember(bobPage, "alice")) === 1);
    // No input for 2.5 s: idle, so she leaves; input brings her back.
    const idle = await within(2_500 + 3_000, "alice left while idle", async () => (await roomMember(bobPage, "alice")) === 0);
    await shot(bobPage, "07-idle-tab-left");
    await tab.mouse.move(100, 120);
    await within(2_000 + 1_000, "alice back after input", async () => (await roomMember(bobPage, "alice")) === 1);
    await tab.close({ runBeforeUnload: true });
    return `left ${hidden} ms after hidden, back ${back} ms after visible, idle leave after ${idle} ms`;
  });

  await step("the count-only lobby shows a number and no name, in the DOM and in every response", async () => {
    const tab = await open(alice, base, "/");
    await within(2_000, "lobby counts alice and bob", async () => (await bobPage.textContent("#lobby-count")) === "2");
    const lobby = await bobPage.textContent("#lobby");
    for (const name of ["alice", "bob", "Alice", "Bob"]) {
      if (lobby.includes(name)) throw new Error(`${name} in the lobby: ${lobby}`);
    }
    const received = await bobPage.evaluate(() => window.__received);
    const lobbyEvents = received.filter((e) => JSON.parse(e.data).channel === "lobby/main");
    if (lobbyEvents.length === 0) throw new Error("no lobby events");
    for (const event of lobbyEvents) {
      if (/alice|bob|"members":\[|"joins"|"leaves"/.test(event.data)) throw new Error(`identities in ${event.data}`);
    }
    for (const answer of await Promise.all(bobPage.answers)) {
      if (answer && /alice/.test(answer.body)) throw new Error(`alice in ${answer.url}: ${answer.body}`);
    }
    await shot(bobPage, "08-lobby-counts-only");
    await tab.close({ runBeforeUnload: true });
    return `${lobbyEvents.length} lobby events checked`;
  });

  await step("a channel bob may not view looks exactly like one that does not exist", async () => {
    const status = await bobPage.textContent("#staff-status");
    if (status !== "no such room") throw new Error(`staff room shows ${status}`);
    const compared = await bobPage.evaluate(async () => {
      const first = (channel) =>
        new Promise((resolve) => {
          const source = new EventSource(`/presence/events?channel=${encodeURIComponent(channel)}`);
          source.addEventListener("state", (event) => {
            source.close();
            resolve(event.data);
          });
        });
      const text = async (response) => [response.status, await response.text()];
      const update = (channel) =>
        fetch("/presence/update", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ client_id: "probe", present: [channel] }),
        }).then(text);
      return {
        events: [await first("staff/main"), await first("staff/nothing-here")],
        state: [await fetch("/presence/state?channel=staff/main").then(text), await fetch("/presence/state?channel=staff/nothing-here").then(text)],
        update: [await update("staff/main"), await update("staff/nothing-here")],
      };
    });
    const same = (a, b) => JSON.stringify(a).replaceAll("staff/main", "C") === JSON.stringify(b).replaceAll("staff/nothing-here", "C");
    for (const [what, [hidden, missing]] of Object.entries(compared)) {
      if (!same(hidden, missing)) throw new Error(`${what}: ${JSON.stringify(hidden)} vs ${JSON.stringify(missing)}`);
    }
    // Alice (staff) does see it.
    const tab = await open(alice, base, "/");
    await within(2_000, "alice sees the staff room", async () => (await tab.textContent("#staff-status")) === "1 inside");
    await shot(tab, "09-alice-sees-staff");
    await shot(bobPage, "10-bob-no-such-room");
    await tab.close({ runBeforeUnload: true });
    return JSON.stringify(compared.state[0]);
  });
}

let failure = null;
try {
  await main();
} catch (error) {
  failure = error;
  console.error(error);
} finally {
  for (const browser of browsers) await browser.close().catch(() => {});
  server?.kill("SIGTERM");
  rmSync(scratch, { recursive: true, force: true });
}
const passed = results.filter((r) => r.ok).length;
const failed = results.length - passed + (failure ? 1 : 0);
console.log(`screenshots in ${output}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
