// The operator console in Debian's Chromium. Started by tests/console.rs, which runs the
// service and the simulator and passes everything in the environment:
//
//   XL_URL                       http://127.0.0.1:PORT
//   XL_ADMIN, XL_OPERATOR, XL_DUTY   user:password
//   XL_IN_CAMERA, XL_OUT_CAMERA  a camera inside and one outside the duty user's scope
//   XL_DEVICE                    the button the service's test presses
//   XL_CHROMIUM                  the browser (default /usr/bin/chromium)
//   XL_ARTIFACTS                 where the screenshots go (tests/artifacts)
//   XL_FAILURES                  where a failed step's screenshot goes
//
// Prints `XL:PRESS` on stdout when the alarm wall is open and waiting for a press; the
// caller then presses the button over MQTT. One line `ok - STEP` per step passed.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const URL_ = env("XL_URL");
const cred = (k) => {
  const [username, ...rest] = env(k).split(":");
  return { username, password: rest.join(":") };
};
const ADMIN = cred("XL_ADMIN");
const OPERATOR = cred("XL_OPERATOR");
const DUTY = cred("XL_DUTY");
const IN_CAMERA = env("XL_IN_CAMERA");
const OUT_CAMERA = env("XL_OUT_CAMERA");
const DEVICE = env("XL_DEVICE");
const ARTIFACTS = env("XL_ARTIFACTS");
const FAILURES = env("XL_FAILURES", ARTIFACTS);

const browser = await chromium.launch({
  executablePath: env("XL_CHROMIUM", "/usr/bin/chromium"),
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
  ],
});

let current = null;
async function step(name, page, fn) {
  const t0 = Date.now();
  current = page;
  try {
    await fn();
    console.log(`ok - ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    console.log(`not ok - ${name}: ${e.message}`);
    if (current) {
      fs.mkdirSync(FAILURES, { recursive: true });
      const file = path.join(FAILURES, `failure-${name.replace(/\W+/g, "-")}.png`);
      await current.screenshot({ path: file, fullPage: true }).catch(() => {});
      console.log(`# screenshot: ${file}`);
    }
    throw e;
  }
}

async function login(ctx, who) {
  const page = await ctx.newPage();
  page.on("pageerror", (e) => console.log(`# page error: ${e.message}`));
  await page.goto(URL_);
  await page.waitForURL(/#\/login/);
  await page.fill("#username", who.username);
  await page.fill("#password", who.password);
  await page.click("form button[type=submit]");
  await page.waitForSelector("#alarm-list");
  return page;
}

/** Waits until the video element's clock moves on by `secs` seconds. */
async function plays(page, selector, secs = 1.5) {
  await page.waitForFunction(
    ([sel, s]) => {
      const v = document.querySelector(sel);
      if (!v) return false;
      if (v.paused) v.play().catch(() => {});
      if (!v.dataset.t0 && v.currentTime > 0) v.dataset.t0 = String(v.currentTime);
      return v.dataset.t0 && v.currentTime - Number(v.dataset.t0) >= s;
    },
    [selector, secs],
    { timeout: 30_000, polling: 200 },
  );
}

const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, name) });

let failed = false;
try {
  const viewport = { width: 1440, height: 960 };
  const look = { viewport, locale: "zh-CN", timezoneId: "Asia/Shanghai" };
  // --- operator: live alarm, acknowledge, clip, resolve, playback, export -------------------
  const opCtx = await browser.newContext({ ...look, acceptDownloads: true });
  let page;
  await step("operator logs in", null, async () => {
    page = await login(opCtx, OPERATOR);
    assert.equal(await page.getAttribute("html", "lang"), "zh-CN");
    await page.waitForSelector("#conn.live", { timeout: 15_000 });
  });

  let alarmId;
  await step("a panic alarm appears without reloading", page, async () => {
    const navigations = [];
    page.on("framenavigated", (f) => f === page.mainFrame() && navigations.push(f.url()));
    const before = await page.$$eval(".card[data-kind=panic]", (l) => l.length);
    assert.equal(before, 0, "no panic alarm before the press");
    console.log("XL:PRESS");
    const card = await page.waitForSelector(".card[data-kind=panic]", { timeout: 30_000 });
    alarmId = await card.getAttribute("data-id");
    assert.ok(alarmId);
    assert.ok(!navigations.some((u) => !u.includes("#")), `the page reloaded: ${navigations}`);
    const alerts = await page.evaluate(() => Number(document.body.dataset.alerts || 0));
    assert.ok(alerts >= 1, "the alarm sound was played");
  });

  await step("acknowledge", page, async () => {
    await page.click(`.card[data-id="${alarmId}"]`);
    await page.waitForSelector("#detail-state[data-state=raised]");
    assert.match(await page.textContent("#detail-coords"), /29\.2653/);
    await page.fill("#note", "值班员已电话联系");
    await page.click("button[data-action=ack]");
    await page.waitForSelector("#detail-state[data-state=acknowledged]");
    await page.waitForSelector(`.card[data-id="${alarmId}"][data-state=acknowledged]`);
  });

  await step("the incident's clip plays inline", page, async () => {
    await page.waitForSelector(".clips video");
    await plays(page, ".clips video");
    await shot(page, "alarm-wall.png");
  });

  await step("resolve with an outcome", page, async () => {
    await page.selectOption("#outcome", "test");
    await page.fill("#note", "演练，已结案");
    await page.click("button[data-action=resolve]");
    await page.waitForSelector("#detail-state[data-state=resolved]");
    await page.waitForSelector(`.card[data-id="${alarmId}"]`, { state: "detached" });
    const history = await page.textContent("#history");
    assert.match(history, /演练，已结案/);
  });

  await step("camera grid", page, async () => {
    await page.click("nav a[data-view=cameras]");
    await page.waitForSelector(`.tile[data-camera="${IN_CAMERA}"]`);
    await page.waitForSelector(`.tile[data-camera="${OUT_CAMERA}"]`);
    await page.waitForSelector(`.tile[data-camera="${IN_CAMERA}"][data-state=online]`);
    await shot(page, "camera-grid.png");
  });

  await step("live view plays", page, async () => {
    await page.click(`.tile[data-camera="${IN_CAMERA}"] button.live-button`);
    await page.waitForSelector(`.tile[data-camera="${IN_CAMERA}"] button.live-button[aria-pressed=true]`);
    await plays(page, `video.live-video[data-camera="${IN_CAMERA}"]`);
    await page.click(`.tile[data-camera="${IN_CAMERA}"] button.live-button`);
    await page.waitForSelector("video.live-video", { state: "detached" });
  });

  await step("playback timeline plays a clicked moment", page, async () => {
    await page.click(`.tile[data-camera="${IN_CAMERA}"] a.playback-link`);
    await page.click('button[data-span="10m"]');
    await page.waitForSelector('button[data-span="10m"][aria-pressed=true]');
    const run = await page.waitForSelector("#timeline rect.run");
    const box = await run.boundingBox();
    await page.mouse.click(box.x + box.width * 0.3, box.y + box.height / 2);
    await plays(page, "#player");
    await shot(page, "playback-timeline.png");
  });

  await step("export a span", page, async () => {
    const [download] = await Promise.all([page.waitForEvent("download", { timeout: 60_000 }), page.click("#export")]);
    const file = await download.path();
    const size = fs.statSync(file).size;
    assert.ok(size > 10_000, `the export is ${size} bytes`);
    const head = fs.readFileSync(file).subarray(4, 8).toString("latin1");
    assert.equal(head, "ftyp", "the export is an MP4");
    assert.equal(await page.getAttribute("#export-status", "data-bytes"), String(size));
  });

  await step("language switch is remembered", page, async () => {
    await page.click("#lang");
    await page.waitForFunction(() => document.documentElement.lang === "en");
    assert.equal(await page.textContent("nav a[data-view=cameras]"), "Cameras");
    await page.reload();
    await page.waitForFunction(() => document.documentElement.lang === "en");
    await page.click("#lang");
    await page.waitForFunction(() => document.documentElement.lang === "zh-CN");
  });

  await step("log out", page, async () => {
    await page.click("#logout");
    await page.waitForSelector("#username");
    const me = await page.evaluate(async () => (await fetch("/api/v1/me")).status);
    assert.equal(me, 401);
  });
  await opCtx.close();

  // --- duty desk: scope is enforced in the page and by the API -----------------------------
  const dutyCtx = await browser.newContext(look);
  await step("duty desk sees only its camera", null, async () => {
    page = await login(dutyCtx, DUTY);
    await page.click("nav a[data-view=cameras]");
    await page.waitForSelector(`.tile[data-camera="${IN_CAMERA}"]`);
    assert.equal(await page.$(`.tile[data-camera="${OUT_CAMERA}"]`), null, "out-of-scope camera listed");
    await page.goto(`${URL_}/#/cameras/${OUT_CAMERA}`);
    const err = await page.waitForSelector("#view-error");
    assert.equal(await err.getAttribute("data-status"), "403");
    const status = await page.evaluate(async (cam) => {
      const a = await fetch(`/api/v1/cameras/${cam}`);
      const b = await fetch(`/api/v1/cameras/${cam}/recordings`);
      return [a.status, b.status];
    }, OUT_CAMERA);
    assert.deepEqual(status, [403, 403]);
    await page.goto(`${URL_}/#/cameras/${IN_CAMERA}`);
    await page.waitForSelector("#timeline");
    assert.equal(await page.$("#export"), null, "duty desk offered an export");
    const devices = await page.evaluate(async () => (await (await fetch("/api/v1/devices")).json()).map((d) => d.id));
    assert.deepEqual(devices, [DEVICE]);
  });
  await dutyCtx.close();

  // --- admin: the audit trail of all of the above ------------------------------------------
  const adminCtx = await browser.newContext(look);
  await step("audit", null, async () => {
    page = await login(adminCtx, ADMIN);
    await page.click("nav a[data-view=audit]");
    await page.waitForSelector("#audit tbody tr");
    const text = (await page.textContent("#audit")).toLowerCase();
    for (const want of ["login", OPERATOR.username, DUTY.username, "ack", "resolve", "export", "live.start", "live.stop", "access.denied", alarmId.toLowerCase()]) {
      assert.ok(text.includes(want.toLowerCase()), `the audit page lacks ${want}`);
    }
    const csv = await page.evaluate(async () => {
      const r = await fetch(document.querySelector("#audit-csv").href);
      return [r.status, r.headers.get("content-type"), await r.text()];
    });
    assert.equal(csv[0], 200);
    assert.match(csv[1], /csv/);
    assert.ok(csv[2].includes(OPERATOR.username));
  });
  await adminCtx.close();
} catch (e) {
  failed = true;
  console.log(`# ${e.stack}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
