// Operator console: login, alarm wall, cameras with playback, buttons and the audit log.
// Plain DOM, hash routing (#/alarms, #/alarms/ID, #/cameras, #/cameras/ID, #/devices,
// #/audit, #/login); the session is the HttpOnly cookie set by POST /api/v1/login, and every
// state-changing request carries the CSRF token that login returned.

import { LANGS, STRINGS } from "./i18n.js";

const API = "/api/v1";
const OUTCOMES = ["genuine", "false", "test", "malicious", "duplicate"];
const HOUR = 3600_000;
const DAY = 24 * HOUR;

const S = {
  me: null,
  lang: LANGS.includes(localStorage.getItem("xl.lang")) ? localStorage.getItem("xl.lang") : "zh-CN",
  incidents: new Map(),
  fresh: new Set(),
  cameras: new Map(),
  devices: [],
  selected: null,
  events: null,
  alerts: 0,
  audio: null,
  seq: 0,
  wanted: null,
  live: new Map(),
};

// ----------------------------------------------------------------------------------------
// text, time, DOM

function t(key, vars = {}) {
  const s = STRINGS[S.lang][key] ?? STRINGS["zh-CN"][key] ?? key;
  return s.replace(/\{(\w+)\}/g, (_, k) => String(vars[k] ?? ""));
}

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVGNS = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fmtTime(ts, withDate = true) {
  if (!ts) return "—";
  const d = new Date(ts);
  const opts = { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
  if (withDate) Object.assign(opts, { year: "numeric", month: "2-digit", day: "2-digit" });
  return new Intl.DateTimeFormat(S.lang, opts).format(d);
}

function fmtAge(ts) {
  const sec = Math.max(0, Math.floor((Date.now() - Date.parse(ts)) / 1000));
  if (sec < 60) return t("ago.s", { n: sec });
  if (sec < 3600) return t("ago.m", { n: Math.floor(sec / 60) });
  if (sec < 86400) return t("ago.h", { n: Math.floor(sec / 3600) });
  return t("ago.d", { n: Math.floor(sec / 86400) });
}

function fmtBytes(n) {
  if (!Number.isFinite(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fmtCoord(lat, lon) {
  if (lat == null || lon == null) return t("alarm.nolocation");
  return `${lat.toFixed(5)}, ${lon.toFixed(5)}`;
}

/** `YYYY-MM-DDTHH:MM:SS` in local time, what datetime-local inputs hold. */
function localInput(ms) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function localDay(ms) {
  return localInput(ms).slice(0, 10);
}

function iso(ms) {
  return new Date(ms).toISOString();
}

function toast(msg, bad = false) {
  const el = document.getElementById("toast");
  el.textContent = msg;
  el.className = bad ? "toast bad" : "toast";
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (el.hidden = true), bad ? 8000 : 3000);
}

// ----------------------------------------------------------------------------------------
// HTTP

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body, raw = false, quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD" && S.me?.csrf) headers["X-CSRF-Token"] = S.me.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(API + path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401 && !quiet401) {
    sessionEnded();
    throw new ApiError(401, "unauthenticated");
  }
  if (!res.ok) {
    let msg = res.statusText;
    try {
      const j = await res.json();
      msg = j?.error?.message || msg;
    } catch {
      // not JSON: keep the status text
    }
    throw new ApiError(res.status, msg);
  }
  return raw ? res : res.json();
}

function errorText(e) {
  if (e instanceof ApiError && e.status === 403) return t("error.forbidden");
  return t("error.generic", { msg: e.message });
}

// ----------------------------------------------------------------------------------------
// session and live events

function sessionEnded() {
  S.me = null;
  stopEvents();
  if (!location.hash.startsWith("#/login")) {
    S.wanted = location.hash;
    location.hash = "#/login";
  }
}

function startEvents() {
  stopEvents();
  const es = new EventSource(`${API}/events`);
  S.events = es;
  const conn = document.getElementById("conn");
  es.addEventListener("open", () => {
    conn.textContent = t("conn.live");
    conn.className = "conn live";
    // Whatever changed while the stream was down: the list is the truth.
    if (currentView() === "alarms") loadAlarms();
  });
  es.addEventListener("error", () => {
    conn.textContent = t("conn.down");
    conn.className = "conn down";
    // A stream refused for a lost session keeps failing: find out and go to the login.
    clearTimeout(startEvents.check);
    startEvents.check = setTimeout(() => api("/me").catch(() => {}), 3000);
  });
  es.addEventListener("alarm", (e) => onAlarmEvent(JSON.parse(e.data)));
  es.addEventListener("camera", (e) => onCameraEvent(JSON.parse(e.data)));
}

function stopEvents() {
  if (S.events) S.events.close();
  S.events = null;
}

function onAlarmEvent(d) {
  const inc = d.after;
  if (!inc) return;
  if (inc.state === "resolved" || d.type === "end") S.incidents.delete(inc.id);
  else S.incidents.set(inc.id, inc);
  if (d.type === "new") {
    S.fresh.add(inc.id);
    setTimeout(() => S.fresh.delete(inc.id), 6000);
    if (inc.kind === "panic") alertSound();
    toast(`${t("alarm.new")}: ${inc.title || t("kind." + inc.kind)}`);
  }
  if (currentView() === "alarms") {
    renderAlarmList();
    if (S.selected === inc.id) loadDetail(inc.id);
  }
}

function onCameraEvent(d) {
  const c = S.cameras.get(d.camera);
  if (c) {
    c.state = d.state;
    c.last_error = d.last_error;
    c.state_since = d.at;
  }
  if (currentView() === "cameras" && !currentArg()) renderCameraTiles();
}

/** A short two-tone siren made on the spot (no audio file). */
function alertSound() {
  S.alerts += 1;
  document.body.dataset.alerts = String(S.alerts);
  try {
    S.audio ||= new AudioContext();
    const ctx = S.audio;
    if (ctx.state === "suspended") ctx.resume();
    const t0 = ctx.currentTime + 0.02;
    for (let i = 0; i < 6; i++) {
      const at = t0 + i * 0.22;
      const o = ctx.createOscillator();
      const g = ctx.createGain();
      o.type = "square";
      o.frequency.setValueAtTime(i % 2 ? 660 : 960, at);
      g.gain.setValueAtTime(0.0001, at);
      g.gain.exponentialRampToValueAtTime(0.2, at + 0.02);
      g.gain.exponentialRampToValueAtTime(0.0001, at + 0.2);
      o.connect(g).connect(ctx.destination);
      o.start(at);
      o.stop(at + 0.21);
    }
  } catch {
    // no audio device: the highlight and the toast still show
  }
}

// Browsers allow sound only after a gesture: make the context on the first one.
addEventListener(
  "pointerdown",
  () => {
    try {
      S.audio ||= new AudioContext();
    } catch {
      // no audio
    }
  },
  { once: true },
);

// ----------------------------------------------------------------------------------------
// routing

function currentView() {
  return (location.hash.split("?")[0].split("/")[1] || "alarms").trim();
}

function currentArg() {
  const a = location.hash.split("?")[0].split("/")[2];
  return a ? decodeURIComponent(a) : null;
}

function hashParams() {
  return new URLSearchParams(location.hash.split("?")[1] || "");
}

function applyStatic() {
  document.documentElement.lang = S.lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  document.getElementById("lang").textContent = S.lang === "zh-CN" ? "EN" : "中文";
  document.title = `${t("brand")} · ${t("nav." + currentView()) === "nav." + currentView() ? t("login.title") : t("nav." + currentView())}`;
  const who = document.getElementById("whoami");
  who.textContent = S.me ? `${S.me.username} (${t("role." + S.me.role)})` : "";
}

function setLang(lang) {
  S.lang = lang;
  localStorage.setItem("xl.lang", lang);
  route();
}

async function route() {
  const seq = ++S.seq;
  const view = currentView();
  if (!S.me && view !== "login") {
    S.wanted = location.hash;
    location.hash = "#/login";
    return;
  }
  document.getElementById("topbar").hidden = !S.me;
  document.getElementById("nav-audit").hidden = S.me?.role !== "admin";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  applyStatic();
  const main = document.getElementById("main");
  stopAllLive();
  main.replaceChildren();
  const arg = currentArg();
  try {
    if (view === "login") return renderLogin(main);
    if (view === "alarms") return await renderAlarms(main, seq, arg);
    if (view === "cameras" && arg) return await renderPlayback(main, seq, arg);
    if (view === "cameras") return await renderCameras(main, seq);
    if (view === "devices") return await renderDevices(main, seq);
    if (view === "audit") return await renderAudit(main, seq);
    location.hash = "#/alarms";
  } catch (e) {
    if (seq !== S.seq || (e instanceof ApiError && e.status === 401)) return;
    main.replaceChildren(h("p", { class: "banner", role: "alert" }, errorText(e)));
  }
}

// ----------------------------------------------------------------------------------------
// login

function renderLogin(main) {
  const err = h("p", { class: "error", role: "alert", id: "login-error" });
  const user = h("input", { name: "username", id: "username", autocomplete: "username", required: true, autofocus: true });
  const pass = h("input", { name: "password", id: "password", type: "password", autocomplete: "current-password", required: true });
  const button = h("button", { class: "primary", type: "submit" }, t("login.submit"));
  const form = h(
    "form",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        err.textContent = "";
        button.disabled = true;
        try {
          const res = await fetch(`${API}/login`, {
            method: "POST",
            credentials: "same-origin",
            headers: { "Content-Type": "application/json", Accept: "application/json" },
            body: JSON.stringify({ username: user.value.trim(), password: pass.value }),
          });
          if (res.status === 401) throw new Error(t("login.bad"));
          if (res.status === 429) throw new Error(t("login.limited"));
          if (!res.ok) throw new Error(`${t("login.failed")} (${res.status})`);
          S.me = await res.json();
          startEvents();
          const to = S.wanted && !S.wanted.startsWith("#/login") ? S.wanted : "#/alarms";
          S.wanted = null;
          location.hash = to;
        } catch (e2) {
          err.textContent = e2.message;
          pass.select();
        } finally {
          button.disabled = false;
        }
      },
    },
    h("label", { for: "username" }, t("login.username"), user),
    h("label", { for: "password" }, t("login.password"), pass),
    button,
    err,
  );
  main.append(
    h(
      "section",
      { class: "login panel", "aria-labelledby": "login-title" },
      h(
        "div",
        { class: "langrow" },
        h("button", { type: "button", class: "ghost", onclick: () => setLang(S.lang === "zh-CN" ? "en" : "zh-CN") }, S.lang === "zh-CN" ? "EN" : "中文"),
      ),
      h("h1", { id: "login-title" }, t("login.title")),
      form,
    ),
  );
  user.focus();
}

// ----------------------------------------------------------------------------------------
// alarm wall

function sortedIncidents() {
  // Most urgent first; within a priority, the one waiting longest first.
  return [...S.incidents.values()].sort(
    (a, b) => a.priority - b.priority || Date.parse(a.opened_at) - Date.parse(b.opened_at),
  );
}

async function loadAlarms() {
  const list = await api("/alarms?state=open&limit=500");
  S.incidents = new Map(list.filter((i) => i.state !== "resolved").map((i) => [i.id, i]));
  if (currentView() === "alarms") renderAlarmList();
}

async function loadDevices() {
  S.devices = await api("/devices");
  return S.devices;
}

async function renderAlarms(main, seq, arg) {
  S.selected = arg;
  const list = h("div", { class: "list", id: "alarm-list", role: "listbox", "aria-label": t("alarms.title") });
  const detail = h("section", { class: "detail", id: "alarm-detail", "aria-live": "polite" }, h("p", { class: "muted" }, t("alarms.pick")));
  main.append(
    h("div", { class: "row" }, h("h1", {}, t("alarms.title")), h("span", { class: "muted", id: "alarm-count" })),
    h("div", { class: "wall" }, list, detail),
  );
  await Promise.all([loadAlarms(), loadDevices().catch(() => [])]);
  if (seq !== S.seq) return;
  renderAlarmList();
  if (arg) await loadDetail(arg);
}

function renderAlarmList() {
  const list = document.getElementById("alarm-list");
  if (!list) return;
  const items = sortedIncidents();
  document.getElementById("alarm-count").textContent = t("alarms.count", { n: items.length });
  if (!items.length) {
    list.replaceChildren(h("p", { class: "muted" }, t("alarms.none")));
    return;
  }
  list.replaceChildren(
    ...items.map((i) => {
      const p = Math.min(i.priority, 3);
      return h(
        "article",
        {
          class: `card p${p}${S.fresh.has(i.id) ? " fresh" : ""}`,
          role: "option",
          tabindex: 0,
          "aria-selected": S.selected === i.id ? "true" : "false",
          dataset: { id: i.id, kind: i.kind, state: i.state },
          onclick: () => (location.hash = `#/alarms/${i.id}`),
          onkeydown: (e) => {
            if (e.key === "Enter" || e.key === " ") {
              e.preventDefault();
              location.hash = `#/alarms/${i.id}`;
            }
          },
        },
        h(
          "div",
          { class: "top" },
          h("span", { class: "title" }, i.title || t("kind." + i.kind)),
          h("span", { class: `badge prio p${p}`, title: t("alarm.priority") }, `P${i.priority}`),
        ),
        h(
          "div",
          { class: "top" },
          h("span", {}, h("span", { class: `badge ${i.state}` }, t("state." + i.state)), " ", t("kind." + i.kind), " · ", i.source_id),
          h("span", { class: "muted", "data-age": i.opened_at, title: fmtTime(i.opened_at) }, fmtAge(i.opened_at)),
        ),
        i.escalation_level > 0 ? h("div", { class: "muted" }, t("alarm.escalated", { n: i.escalation_level })) : null,
      );
    }),
  );
}

async function loadDetail(id) {
  const box = document.getElementById("alarm-detail");
  if (!box) return;
  let d;
  try {
    d = await api(`/alarms/${encodeURIComponent(id)}`);
  } catch (e) {
    if (S.selected === id) box.replaceChildren(h("p", { class: "banner", role: "alert" }, errorText(e)));
    return;
  }
  if (S.selected !== id) return;
  // Keep what the operator is typing across live refreshes.
  const oldNote = box.querySelector("#note")?.value ?? "";
  const oldOutcome = box.querySelector("#outcome")?.value ?? "";
  box.replaceChildren(...detailView(d, oldNote, oldOutcome));
}

function detailView(d, note0, outcome0) {
  const role = S.me?.role;
  const canAct = role && role !== "viewer" && d.state !== "resolved";
  const note = h("textarea", { id: "note", rows: 2, "aria-label": t("alarm.note"), placeholder: t("alarm.note") });
  note.value = note0;
  const outcome = h(
    "select",
    { id: "outcome", "aria-label": t("alarm.outcome") },
    ["", ...OUTCOMES].map((o) => h("option", { value: o }, t("outcome." + o))),
  );
  outcome.value = outcome0;
  const act = async (action) => {
    const body = { note: note.value.trim() || undefined };
    if (action === "resolve") {
      if (!outcome.value) {
        toast(t("alarm.needoutcome"), true);
        outcome.focus();
        return;
      }
      body.outcome = outcome.value;
    }
    try {
      const after = await api(`/alarms/${encodeURIComponent(d.id)}/${action}`, { method: "POST", body });
      note.value = "";
      toast(`${t("alarm.done")}: ${t("state." + after.state)}`);
      if (after.state === "resolved") S.incidents.delete(after.id);
      else S.incidents.set(after.id, after);
      renderAlarmList();
      await loadDetail(d.id);
    } catch (e) {
      toast(errorText(e), true);
    }
  };
  const btn = (action, enabled, cls) =>
    h("button", { type: "button", class: cls, "data-action": action, disabled: !canAct || !enabled, onclick: () => act(action) }, t("alarm." + action));
  const dev = S.devices.find((x) => x.id === d.source_id);
  const lat = d.lat ?? dev?.lat;
  const lon = d.lon ?? dev?.lon;
  return [
    h(
      "div",
      { class: "head" },
      h("span", { class: `badge prio p${Math.min(d.priority, 3)}` }, `P${d.priority}`),
      h("h1", {}, d.title || t("kind." + d.kind)),
      h("span", { class: `badge ${d.state}`, id: "detail-state", "data-state": d.state }, t("state." + d.state)),
      d.outcome ? h("span", { class: "badge" }, t("outcome." + d.outcome)) : null,
    ),
    h(
      "div",
      { class: "panel" },
      h(
        "table",
        {},
        h(
          "tbody",
          {},
          h("tr", {}, h("th", {}, t("alarm.source")), h("td", {}, `${t("kind." + d.kind)} · ${d.source_id}${dev?.name ? ` (${dev.name})` : ""}`)),
          h("tr", {}, h("th", {}, t("alarm.opened")), h("td", {}, fmtTime(d.opened_at), " · ", h("span", { "data-age": d.opened_at }, fmtAge(d.opened_at)))),
          h("tr", {}, h("th", {}, t("alarm.signals")), h("td", {}, String(d.signal_count))),
          h("tr", {}, h("th", {}, t("alarm.location")), h("td", { class: "mono", id: "detail-coords" }, fmtCoord(lat, lon))),
        ),
      ),
    ),
    h(
      "div",
      { class: "panel actions" },
      note,
      h("div", { class: "buttons" }, outcome),
      h(
        "div",
        { class: "buttons" },
        btn("ack", d.state === "raised", "primary"),
        btn("dispatch", d.state === "raised" || d.state === "acknowledged"),
        btn("resolve", true, "danger"),
      ),
    ),
    h(
      "div",
      {},
      h("h2", {}, t("alarm.clips")),
      d.clips?.length
        ? h(
            "div",
            { class: "clips" },
            d.clips.map((c) =>
              h(
                "figure",
                {},
                h("video", { src: c.export_url, controls: true, preload: "metadata", muted: true, playsinline: true, "data-camera": c.camera }),
                h("figcaption", {}, `${c.camera} · ${fmtTime(c.from, false)} – ${fmtTime(c.to, false)}`),
              ),
            ),
          )
        : h("p", { class: "muted" }, t("alarm.noclips")),
    ),
    h(
      "div",
      { class: "cols" },
      h(
        "div",
        {},
        h("h2", {}, t("alarm.history")),
        h(
          "table",
          { id: "history" },
          h(
            "tbody",
            {},
            (d.history || []).map((c) =>
              h(
                "tr",
                {},
                h("td", { class: "mono" }, fmtTime(c.at, false)),
                h("td", {}, t("state." + c.to_state)),
                h("td", {}, c.actor === "system" ? t("alarm.system") : c.actor),
                h("td", {}, [c.outcome ? t("outcome." + c.outcome) : "", c.note ? ` ${c.note}` : ""].join("").trim()),
              ),
            ),
          ),
        ),
        h("h2", {}, t("alarm.signals")),
        h(
          "table",
          {},
          h(
            "tbody",
            {},
            (d.signals || []).map((g) =>
              h("tr", {}, h("td", { class: "mono" }, fmtTime(g.received_at, false)), h("td", {}, t("kind." + g.kind)), h("td", {}, g.source_id), h("td", { class: "mono" }, g.seq ?? "")),
            ),
          ),
        ),
      ),
      h("div", {}, h("h2", {}, t("device.map")), deviceMap(S.devices, d.source_id, lat, lon)),
    ),
  ];
}

/** Devices as dots on a plain projection of their coordinates: enough to see which corner. */
function deviceMap(devices, hit, hitLat, hitLon) {
  const pts = devices.filter((d) => d.lat != null && d.lon != null).map((d) => ({ id: d.id, name: d.name, lat: d.lat, lon: d.lon, online: d.online }));
  if (hitLat != null && hitLon != null && !pts.some((p) => p.id === hit)) pts.push({ id: hit, lat: hitLat, lon: hitLon });
  const W = 400;
  const H = 220;
  const svg = s("svg", { class: "map", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": t("device.map") });
  if (!pts.length) {
    svg.append(s("text", { x: 10, y: 20 }, t("alarm.nolocation")));
    return svg;
  }
  const lats = pts.map((p) => p.lat);
  const lons = pts.map((p) => p.lon);
  const k = Math.cos((((Math.min(...lats) + Math.max(...lats)) / 2) * Math.PI) / 180);
  const spanX = Math.max((Math.max(...lons) - Math.min(...lons)) * k, 1e-4);
  const spanY = Math.max(Math.max(...lats) - Math.min(...lats), 1e-4);
  const scale = Math.min((W - 60) / spanX, (H - 40) / spanY);
  const cx = (Math.max(...lons) + Math.min(...lons)) / 2;
  const cy = (Math.max(...lats) + Math.min(...lats)) / 2;
  for (const p of pts) {
    const x = W / 2 + (p.lon - cx) * k * scale;
    const y = H / 2 - (p.lat - cy) * scale;
    const cls = p.id === hit ? "dev hit" : p.online === true ? "dev on" : p.online === false ? "dev off" : "dev";
    svg.append(
      s("circle", { class: cls, cx: x.toFixed(1), cy: y.toFixed(1), r: p.id === hit ? 8 : 5 }, s("title", {}, `${p.name || p.id} ${p.lat}, ${p.lon}`)),
      s("text", { x: (x + 9).toFixed(1), y: (y + 3).toFixed(1) }, p.id),
    );
  }
  return svg;
}

// ----------------------------------------------------------------------------------------
// cameras

async function renderCameras(main, seq) {
  const list = await api("/cameras");
  if (seq !== S.seq) return;
  S.cameras = new Map(list.map((c) => [c.id, c]));
  main.append(h("h1", {}, t("cameras.title")), h("div", { class: "grid", id: "camera-grid" }));
  renderCameraTiles();
}

function renderCameraTiles() {
  const grid = document.getElementById("camera-grid");
  if (!grid) return;
  if (!S.cameras.size) {
    grid.replaceChildren(h("p", { class: "muted" }, t("cameras.none")));
    return;
  }
  grid.replaceChildren(
    ...[...S.cameras.values()].map((c) =>
      h(
        "article",
        { class: "tile", dataset: { camera: c.id, state: c.state } },
        h(
          "div",
          { class: `screen ${c.state}` },
          h("span", { class: `badge ${c.state}` }, t("camera.state." + c.state)),
          h("span", { class: "idle" }, t("camera.liveidle")),
        ),
        h(
          "div",
          { class: "meta" },
          h("div", { class: "row" }, h("span", { class: "name" }, c.name || c.id), h("span", { class: "muted mono" }, c.id)),
          h(
            "div",
            { class: "muted" },
            `${t("camera.fps")} ${c.fps != null ? c.fps.toFixed(1) : "—"} · ${c.width && c.height ? `${c.width}×${c.height}` : "—"}${c.codec ? ` · ${c.codec}` : ""}`,
          ),
          h("div", { class: "muted" }, `${t("camera.since")} ${fmtTime(c.state_since)}`),
          c.last_error ? h("div", { class: "err" }, `${t("camera.lasterror")}: ${c.last_error}`) : null,
          h(
            "div",
            { class: "row" },
            h("button", { type: "button", class: "live-button", "aria-pressed": S.live.has(c.id) ? "true" : "false", onclick: () => toggleLive(c.id) }, t(S.live.has(c.id) ? "camera.livestop" : "camera.live")),
            h("a", { href: `#/cameras/${encodeURIComponent(c.id)}`, class: "playback-link" }, t("camera.playback")),
          ),
        ),
      ),
    ),
  );
  // Running live views survive the redraw: their video moves into the new tile.
  for (const [id, v] of S.live) {
    const screen = grid.querySelector(`.tile[data-camera="${CSS.escape(id)}"] .screen`);
    if (!screen) {
      stopLive(id);
      continue;
    }
    screen.classList.add("live");
    screen.append(v.video, v.notice);
    v.video.play().catch(() => {});
  }
}

// ----------------------------------------------------------------------------------------
// live view: GET /cameras/{id}/live is a WebSocket of fragmented MP4 fed to Media Source
// Extensions. A text message {"codec","width","height"} comes before each init segment, and
// {"skipped": n} when the connection was too slow and frames were dropped.

function toggleLive(id) {
  if (S.live.has(id)) stopLive(id);
  else startLive(id);
  renderCameraTiles();
}

function stopAllLive() {
  for (const id of [...S.live.keys()]) stopLive(id);
}

function stopLive(id) {
  const v = S.live.get(id);
  if (!v) return;
  S.live.delete(id);
  v.closed = true;
  v.ws.close();
  v.video.pause();
  v.video.removeAttribute("src");
  v.video.load();
  URL.revokeObjectURL(v.url);
  v.video.remove();
  v.notice.remove();
}

function startLive(id) {
  if (!window.MediaSource) {
    toast(t("live.unsupported"), true);
    return;
  }
  const ms = new MediaSource();
  const video = h("video", { class: "live-video", muted: true, autoplay: true, playsinline: true, "data-camera": id });
  video.muted = true;
  const notice = h("span", { class: "live-notice", hidden: true, role: "status" });
  const url = URL.createObjectURL(ms);
  video.src = url;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}${API}/cameras/${encodeURIComponent(id)}/live`);
  ws.binaryType = "arraybuffer";
  const v = { ws, ms, video, notice, url, sb: null, queue: [], codec: null, closed: false };
  S.live.set(id, v);

  const pump = () => {
    if (!v.sb || v.sb.updating || !v.queue.length || v.closed) return;
    const next = v.queue.shift();
    if (typeof next === "string") {
      // New stream parameters with another codec.
      if (v.sb.changeType) v.sb.changeType(next);
      pump();
      return;
    }
    try {
      v.sb.appendBuffer(next);
    } catch (e) {
      if (e.name === "QuotaExceededError") {
        v.queue.unshift(next);
        trim(v, 0);
      } else fail(e.message);
    }
  };
  const fail = (msg) => {
    if (v.closed) return;
    toast(`${t("live.ended")}: ${msg}`, true);
    stopLive(id);
    renderCameraTiles();
  };
  const onHeader = (m) => {
    const mime = `video/mp4; codecs="${m.codec}"`;
    if (!MediaSource.isTypeSupported(mime)) return fail(t("live.unsupported") + ` (${m.codec})`);
    if (!v.sb) {
      const open = () => {
        v.sb = ms.addSourceBuffer(mime);
        v.sb.mode = "segments";
        v.sb.addEventListener("updateend", () => {
          keepUp(v);
          pump();
        });
        pump();
      };
      if (ms.readyState === "open") open();
      else ms.addEventListener("sourceopen", open, { once: true });
    } else if (v.codec !== m.codec) v.queue.push(mime);
    v.codec = m.codec;
  };
  ws.onmessage = (e) => {
    if (typeof e.data === "string") {
      const m = JSON.parse(e.data);
      if (m.codec) onHeader(m);
      if (m.skipped != null) {
        notice.textContent = t("live.skipped", { n: m.skipped });
        notice.hidden = false;
        clearTimeout(v.noticeTimer);
        v.noticeTimer = setTimeout(() => (notice.hidden = true), 5000);
      }
      return;
    }
    v.queue.push(e.data);
    pump();
  };
  ws.onclose = (e) => {
    if (!v.closed) fail(e.reason || t("live.closed"));
  };
}

/** Stay near the live edge and keep the buffer small. */
function keepUp(v) {
  const b = v.video.buffered;
  if (!b.length) return;
  const end = b.end(b.length - 1);
  if (end - v.video.currentTime > 3) v.video.currentTime = Math.max(b.start(b.length - 1), end - 0.5);
  if (v.video.paused) v.video.play().catch(() => {});
  trim(v, 30);
}

function trim(v, keep) {
  const b = v.video.buffered;
  if (!b.length || v.sb.updating) return;
  const upto = Math.min(v.video.currentTime - 2, b.end(b.length - 1) - keep);
  if (upto > b.start(0) + 1) v.sb.remove(b.start(0), upto);
}

// ----------------------------------------------------------------------------------------
// playback

const SPANS = [
  ["24h", DAY],
  ["1h", HOUR],
  ["10m", 10 * 60_000],
];

async function renderPlayback(main, seq, camId) {
  const q = hashParams();
  const now = Date.now();
  const today = localDay(now);
  const day = q.get("day") || today;
  const dayStart = new Date(`${day}T00:00:00`).getTime();
  const dayEnd = dayStart + DAY;
  const spanName = q.get("span") || (day === today ? "1h" : "24h");
  const span = (SPANS.find(([n]) => n === spanName) || SPANS[0])[1];
  const defaultEnd = day === today ? Math.min(now + span * 0.05, dayEnd) : dayEnd;
  let viewTo = q.has("end") ? Number(q.get("end")) : defaultEnd;
  let viewFrom = Math.max(dayStart, viewTo - span);
  viewTo = viewFrom + span;

  let rec;
  try {
    rec = await api(`/cameras/${encodeURIComponent(camId)}/recordings?from=${iso(dayStart)}&to=${iso(dayEnd)}&detail=runs`);
  } catch (e) {
    if (seq !== S.seq) return;
    const key = e.status === 403 ? "playback.forbidden" : e.status === 404 ? "playback.notfound" : null;
    main.append(
      h("h1", {}, t("playback.title", { cam: camId })),
      h("p", { class: "banner", role: "alert", id: "view-error", "data-status": e.status }, key ? t(key) : errorText(e)),
    );
    return;
  }
  const [motion, alarms, cam] = await Promise.all([
    api(`/cameras/${encodeURIComponent(camId)}/motion?from=${iso(dayStart)}&to=${iso(dayEnd)}`).catch(() => []),
    api(`/alarms?camera=${encodeURIComponent(camId)}&since=${iso(dayStart)}&limit=1000`).catch(() => []),
    api(`/cameras/${encodeURIComponent(camId)}`).catch(() => null),
  ]);
  if (seq !== S.seq) return;

  const go = (params) => {
    const p = new URLSearchParams({ day, span: spanName, end: String(viewTo), ...params });
    location.hash = `#/cameras/${encodeURIComponent(camId)}?${p}`;
  };
  const dayInput = h("input", { type: "date", value: day, "aria-label": t("playback.day"), onchange: (e) => e.target.value && (location.hash = `#/cameras/${encodeURIComponent(camId)}?day=${e.target.value}`) });
  // A new span keeps "now" in view on today, else the middle of what was shown.
  const spanEnd = (ms) => (day === today ? Math.min(dayEnd, now + ms * 0.05) : Math.min(dayEnd, viewFrom + span / 2 + ms / 2));
  const spanButtons = SPANS.map(([n, ms]) =>
    h("button", { type: "button", class: n === spanName ? "primary" : "", "data-span": n, "aria-pressed": n === spanName ? "true" : "false", onclick: () => go({ span: n, end: String(spanEnd(ms)) }) }, n),
  );
  const pan = (dir) => go({ end: String(Math.min(dayEnd, Math.max(dayStart + span, viewTo + dir * span * 0.8))) });

  const player = h("video", { id: "player", controls: true, muted: true, autoplay: true, playsinline: true });
  const playing = h("p", { class: "muted", id: "playing" }, t("playback.hint"));
  const fromIn = h("input", { type: "datetime-local", step: 1, id: "export-from", value: localInput(Math.max(viewFrom, viewTo - 5 * 60_000)), "aria-label": t("playback.from") });
  const toIn = h("input", { type: "datetime-local", step: 1, id: "export-to", value: localInput(Math.min(viewTo, now)), "aria-label": t("playback.to") });
  const progress = h("progress", { id: "export-progress", max: 1, value: 0, hidden: true });
  const status = h("span", { id: "export-status", class: "muted", role: "status" });
  const saveLink = h("a", { id: "export-link", hidden: true });
  const exportBtn = h("button", { type: "button", id: "export", class: "primary", onclick: () => doExport() }, t("playback.export"));

  async function doExport() {
    const from = new Date(fromIn.value).getTime();
    const to = new Date(toIn.value).getTime();
    if (!(to > from)) {
      toast(t("error.generic", { msg: "from < to" }), true);
      return;
    }
    exportBtn.disabled = true;
    progress.hidden = false;
    progress.removeAttribute("value");
    status.textContent = t("playback.exporting", { p: "" });
    try {
      const res = await api(`/cameras/${encodeURIComponent(camId)}/export.mp4?from=${iso(from)}&to=${iso(to)}`, { raw: true });
      const total = Number(res.headers.get("content-length")) || 0;
      const reader = res.body.getReader();
      const parts = [];
      let got = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        parts.push(value);
        got += value.length;
        if (total) progress.value = got / total;
        status.textContent = t("playback.exporting", { p: total ? `${Math.round((100 * got) / total)}%` : fmtBytes(got) });
      }
      progress.value = 1;
      const blob = new Blob(parts, { type: "video/mp4" });
      if (saveLink.href) URL.revokeObjectURL(saveLink.href);
      saveLink.href = URL.createObjectURL(blob);
      const stamp = localInput(from).replace(/[-:]/g, "").replace("T", "-");
      saveLink.download = `${camId}-${stamp}.mp4`;
      saveLink.textContent = saveLink.download;
      saveLink.hidden = false;
      status.textContent = t("playback.exported", { size: fmtBytes(got) });
      status.dataset.bytes = String(got);
      saveLink.click();
    } catch (e) {
      status.textContent = errorText(e);
    } finally {
      exportBtn.disabled = false;
    }
  }

  function play(at) {
    const from = Math.max(dayStart, at - 5_000);
    const to = Math.min(from + 60_000, Date.now());
    if (to <= from) return;
    player.src = `${API}/cameras/${encodeURIComponent(camId)}/export.mp4?from=${iso(from)}&to=${iso(to)}`;
    player.play().catch(() => {});
    playing.textContent = t("playback.playing", { from: fmtTime(from, false), to: fmtTime(to, false) });
    fromIn.value = localInput(from);
    toIn.value = localInput(to);
    cursor.setAttribute("x1", x(at));
    cursor.setAttribute("x2", x(at));
    cursor.setAttribute("visibility", "visible");
  }

  // The timeline: W units across [viewFrom, viewTo].
  const W = 1000;
  const x = (ms) => (((Math.min(Math.max(ms, viewFrom), viewTo) - viewFrom) / span) * W).toFixed(2);
  const width = (a, b) => Math.max(0.6, x(b) - x(a)).toFixed(2);
  const svg = s("svg", { class: "timeline", id: "timeline", viewBox: `0 0 ${W} 96`, preserveAspectRatio: "none", role: "img", "aria-label": t("playback.hint") });
  const inView = (a, b) => b > viewFrom && a < viewTo;
  const tickEvery = span >= DAY ? 2 * HOUR : span >= HOUR ? 5 * 60_000 : 60_000;
  for (let tk = Math.ceil(viewFrom / tickEvery) * tickEvery; tk <= viewTo; tk += tickEvery) {
    svg.append(s("line", { class: "tick", x1: x(tk), x2: x(tk), y1: 0, y2: 96 }));
    svg.append(s("text", { class: "label", x: Number(x(tk)) + 2, y: 92 }, fmtTime(tk, false).slice(0, 5)));
  }
  for (const g of rec.gaps || []) {
    const a = Date.parse(g.start);
    const b = g.end ? Date.parse(g.end) : now;
    if (inView(a, b)) svg.append(s("rect", { class: "gap", x: x(a), y: 22, width: width(a, b), height: 36 }, s("title", {}, g.reason)));
  }
  let recorded = 0;
  for (const r of rec.runs || []) {
    const a = Date.parse(r.start);
    const b = Date.parse(r.end);
    recorded += b - a;
    if (inView(a, b)) svg.append(s("rect", { class: "run", x: x(a), y: 22, width: width(a, b), height: 36, "data-start": r.start, "data-end": r.end }, s("title", {}, `${fmtTime(a, false)} – ${fmtTime(b, false)} · ${fmtBytes(r.bytes)}`)));
  }
  for (const m of motion || []) {
    const a = Date.parse(m.start);
    const b = m.end ? Date.parse(m.end) : a + 1000;
    if (inView(a, b)) svg.append(s("rect", { class: "motion", x: x(a), y: 62, width: width(a, b), height: 8 }, s("title", {}, `${m.zone} ${m.score?.toFixed?.(2) ?? ""}`)));
  }
  for (const a of alarms || []) {
    const at = Date.parse(a.opened_at);
    if (inView(at, at + 1)) svg.append(s("polygon", { class: "alarm", points: `${x(at)},20 ${Number(x(at)) - 6},4 ${Number(x(at)) + 6},4` }, s("title", {}, `${a.title || a.kind} · ${fmtTime(at, false)}`)));
  }
  const cursor = s("line", { class: "cursor", x1: 0, x2: 0, y1: 0, y2: 96, visibility: "hidden" });
  svg.append(cursor);
  svg.addEventListener("click", (e) => {
    const box = svg.getBoundingClientRect();
    play(viewFrom + ((e.clientX - box.left) / box.width) * span);
  });

  const canExport = S.me?.role !== "duty";
  main.append(
    h("div", { class: "row" }, h("h1", {}, t("playback.title", { cam: cam?.name ? `${cam.name} (${camId})` : camId })), cam ? h("span", { class: `badge ${cam.state}` }, t("camera.state." + cam.state)) : null),
    h(
      "div",
      { class: "row" },
      h("label", {}, `${t("playback.day")} `, dayInput),
      ...spanButtons,
      h("button", { type: "button", onclick: () => pan(-1), "aria-label": "◀" }, "◀"),
      h("button", { type: "button", onclick: () => pan(1), "aria-label": "▶" }, "▶"),
      h("span", { class: "muted" }, `${fmtTime(viewFrom, false)} – ${fmtTime(viewTo, false)}`),
    ),
    h(
      "div",
      { class: "legend" },
      h("span", {}, h("i", { class: "sw-run" }), t("playback.legend.rec")),
      h("span", {}, h("i", { class: "sw-gap" }), t("playback.legend.gap")),
      h("span", {}, h("i", { class: "sw-alarm" }), t("playback.legend.alarm")),
      h("span", {}, h("i", { class: "sw-motion" }), t("playback.legend.motion")),
    ),
    h("div", { class: "timeline-wrap" }, svg),
    h("p", { class: "muted", hidden: recorded > 0 }, t("playback.norec")),
    h("div", { class: "cols" }, h("div", {}, player, playing), h(
      "div",
      { class: "panel" },
      h("h2", {}, t("playback.export")),
      canExport
        ? h(
            "div",
            { class: "row" },
            h("label", {}, `${t("playback.from")} `, fromIn),
            h("label", {}, `${t("playback.to")} `, toIn),
            exportBtn,
            progress,
            status,
            saveLink,
          )
        : h("p", { class: "muted" }, t("playback.noexport")),
    )),
  );
}

// ----------------------------------------------------------------------------------------
// devices

async function renderDevices(main, seq) {
  const list = await loadDevices();
  if (seq !== S.seq) return;
  const yesNo = (v) => (v === true ? t("yes") : v === false ? t("no") : t("unknown"));
  main.append(
    h("h1", {}, t("devices.title")),
    list.length
      ? h(
          "div",
          { class: "cols" },
          h(
            "div",
            { class: "panel" },
            h(
              "table",
              { id: "devices" },
              h("thead", {}, h("tr", {}, ["device.id", "device.name", "device.online", "device.battery", "device.rssi", "device.lastseen", "device.location", "device.cameras"].map((k) => h("th", { scope: "col" }, t(k))))),
              h(
                "tbody",
                {},
                list.map((d) =>
                  h(
                    "tr",
                    { dataset: { device: d.id } },
                    h("td", { class: "mono" }, d.id),
                    h("td", {}, d.name || ""),
                    h("td", {}, h("span", { class: `badge ${d.online === true ? "online" : d.online === false ? "offline" : "connecting"}` }, yesNo(d.online))),
                    h("td", {}, d.battery != null ? `${d.battery}%` : "—"),
                    h("td", {}, d.rssi != null ? `${d.rssi} dBm` : "—"),
                    h("td", {}, d.last_seen ? `${fmtTime(d.last_seen)} (${fmtAge(d.last_seen)})` : "—"),
                    h("td", { class: "mono" }, fmtCoord(d.lat, d.lon)),
                    h("td", {}, (d.cameras || []).map((c, i) => [i ? ", " : "", h("a", { href: `#/cameras/${encodeURIComponent(c)}` }, c)])),
                  ),
                ),
              ),
            ),
          ),
          h("div", {}, deviceMap(list, null)),
        )
      : h("p", { class: "muted" }, t("devices.none")),
  );
}

// ----------------------------------------------------------------------------------------
// audit

const AUDIT_FIRST = ["at", "time", "ts", "actor", "actor_kind", "user", "username", "role", "action", "target", "object", "outcome", "result", "status", "remote_addr", "ip", "detail", "details"];

async function renderAudit(main, seq) {
  main.append(h("h1", {}, t("audit.title")));
  if (S.me?.role !== "admin") {
    main.append(h("p", { class: "banner", role: "alert" }, t("audit.forbidden")));
    return;
  }
  const since = hashParams().get("since") || iso(Date.now() - 7 * DAY);
  let data;
  try {
    data = await api(`/audit?since=${encodeURIComponent(since)}&limit=1000`);
  } catch (e) {
    if (seq !== S.seq) return;
    main.append(h("p", { class: "banner", role: "alert" }, e.status === 403 ? t("audit.forbidden") : errorText(e)));
    return;
  }
  if (seq !== S.seq) return;
  const rows = Array.isArray(data) ? data : data.entries || data.rows || data.audit || data.items || [];
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))].filter((k) => !["id", "node_id"].includes(k));
  keys.sort((a, b) => (AUDIT_FIRST.indexOf(a) + 1 || 99) - (AUDIT_FIRST.indexOf(b) + 1 || 99));
  const cell = (v, k) => {
    if (v == null) return "";
    if (typeof v === "object") return JSON.stringify(v);
    if (["at", "time", "ts"].includes(k)) return fmtTime(v);
    return String(v);
  };
  const sinceIn = h("input", { type: "datetime-local", step: 1, value: localInput(Date.parse(since)), "aria-label": t("audit.since") });
  main.append(
    h(
      "div",
      { class: "row" },
      h("label", {}, `${t("audit.since")} `, sinceIn),
      h("button", { type: "button", onclick: () => (location.hash = `#/audit?since=${encodeURIComponent(iso(new Date(sinceIn.value).getTime()))}`) }, t("refresh")),
      h("a", { href: `${API}/audit?since=${encodeURIComponent(since)}&limit=10000&format=csv`, download: "audit.csv", id: "audit-csv" }, t("audit.csv")),
    ),
    rows.length
      ? h(
          "div",
          { class: "panel" },
          h(
            "table",
            { id: "audit" },
            h("thead", {}, h("tr", {}, keys.map((k) => h("th", { scope: "col" }, k)))),
            h("tbody", {}, rows.map((r) => h("tr", {}, keys.map((k) => h("td", { class: k === "at" ? "mono" : "" }, cell(r[k], k)))))),
          ),
        )
      : h("p", { class: "muted" }, t("audit.none")),
  );
}

// ----------------------------------------------------------------------------------------
// start

document.getElementById("lang").addEventListener("click", () => setLang(S.lang === "zh-CN" ? "en" : "zh-CN"));
document.getElementById("logout").addEventListener("click", async () => {
  try {
    await api("/logout", { method: "POST", quiet401: true });
  } catch {
    // the session is gone either way
  }
  S.me = null;
  stopEvents();
  location.hash = "#/login";
});
addEventListener("hashchange", route);
setInterval(() => {
  for (const el of document.querySelectorAll("[data-age]")) el.textContent = fmtAge(el.dataset.age);
}, 1000);

(async () => {
  try {
    S.me = await api("/me", { quiet401: true });
    startEvents();
  } catch {
    S.me = null;
  }
  route();
})();
