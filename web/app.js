// The live page: a map of Manhattan's zones with the latest pickups, the pipeline's figures as they stream
// in from GET /events (Server-Sent Events), and a form that requests a ride through POST /rides and follows
// it with GET /rides/{id} until the pipeline has decided it.
//
// Plain ES2020, no build step, nothing loaded from outside the service. Every piece of data reaches the page
// through textContent or an SVG attribute, never innerHTML: ride ids, zone names and rejection reasons come
// from whoever produced the rides.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
// Manhattan's latitude: a degree of longitude there is this fraction of a degree of latitude, so scaling x
// by it keeps the island's shape (an equirectangular projection centred on the city).
const COS_LAT = Math.cos((40.78 * Math.PI) / 180);
const MAP_HEIGHT = 1000;           // the map's viewBox height; its width follows the city's shape
const POLL_MS = 500;               // GET /rides/{id} while a ride is undecided
const SLOW_POLL_MS = 5000;         // after POLL_FAST_FOR_MS, a ride still undecided is asked about less often
const POLL_FAST_FOR_MS = 120000;
const STALE_MS = 5000;             // /events sends about once a second; this long without one is news
const TOP_ZONES = 8;

const $ = (id) => document.getElementById(id);

const state = {
  zones: [],          // {name, label: [lon, lat], polygons: [rings of [lon, lat]], path, share, rides}
  view: null,         // the projection fitted to the city: {minX, maxY, scale, width}
  pickup: null,       // {lon, lat, zone, fromMap}
  dropoff: null,
  nextClick: "pickup",
  lastEventAt: 0,
  submissionKey: null, // the Idempotency-Key of the submission in flight (see submitRide)
};

// ------------------------------------------------------------------------------------------- DOM helpers

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmtInt(n) {
  return typeof n === "number" ? n.toLocaleString("en-US") : "–";
}

function fmtMinutes(m) {
  return typeof m === "number" ? `${m.toFixed(1)} min` : "–";
}

// Fares arrive as decimal strings ("12.30") with a currency code; an unknown code still shows the amount.
function fmtMoney(amount, currency) {
  if (amount === null || amount === undefined) return "–";
  const value = Number(amount);
  if (!currency || !Number.isFinite(value)) return String(amount);
  try {
    return new Intl.NumberFormat("en-US", { style: "currency", currency }).format(value);
  } catch (_) {
    return `${amount} ${currency}`;
  }
}

function fmtTime(iso) {
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? "" : t.toLocaleTimeString("en-GB", { hour12: false });
}

// ------------------------------------------------------------------------------------------- projection

function polygonsOf(geometry) {
  if (!geometry) return [];
  if (geometry.type === "Polygon") return [geometry.coordinates];
  if (geometry.type === "MultiPolygon") return geometry.coordinates;
  return [];
}

// Fits the city into a viewBox MAP_HEIGHT units tall, with a margin of water around it.
function fitView(features) {
  let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  for (const f of features) {
    for (const poly of polygonsOf(f.geometry)) {
      for (const [lon, lat] of poly[0] || []) {
        minX = Math.min(minX, lon * COS_LAT); maxX = Math.max(maxX, lon * COS_LAT);
        minY = Math.min(minY, lat); maxY = Math.max(maxY, lat);
      }
    }
  }
  const pad = (maxY - minY) * 0.03;
  minX -= pad; maxX += pad; minY -= pad; maxY += pad;
  const scale = MAP_HEIGHT / (maxY - minY);
  return { minX, maxY, scale, width: (maxX - minX) * scale };
}

function project([lon, lat]) {
  const v = state.view;
  return [(lon * COS_LAT - v.minX) * v.scale, (v.maxY - lat) * v.scale];
}

function unproject([x, y]) {
  const v = state.view;
  return [(x / v.scale + v.minX) / COS_LAT, v.maxY - y / v.scale];
}

function pathData(polygons) {
  const ringPath = (ring) => "M" + ring.map((p) => project(p).map((c) => c.toFixed(1)).join(" ")).join("L") + "Z";
  return polygons.map((rings) => rings.map(ringPath).join("")).join("");
}

// Even-odd ray casting over every ring, so that holes count as outside.
function zoneAt(lon, lat) {
  for (const zone of state.zones) {
    let inside = false;
    for (const rings of zone.polygons) {
      for (const ring of rings) {
        for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
          const [xi, yi] = ring[i], [xj, yj] = ring[j];
          if ((yi > lat) !== (yj > lat) && lon < ((xj - xi) * (lat - yi)) / (yj - yi) + xi) inside = !inside;
        }
      }
    }
    if (inside) return zone;
  }
  return null;
}

// ------------------------------------------------------------------------------------------------- map

function drawMap(city) {
  const features = (city.features || []).filter((f) => f.properties && typeof f.properties.name === "string");
  state.view = fitView(features);
  const map = $("map");
  map.setAttribute("viewBox", `0 0 ${state.view.width.toFixed(1)} ${MAP_HEIGHT}`);
  map.style.setProperty("--map-aspect", String(state.view.width / MAP_HEIGHT));
  const zonesLayer = svg("g", { class: "zones" });
  for (const f of features) {
    const zone = { name: f.properties.name, label: f.properties.label, polygons: polygonsOf(f.geometry) };
    zone.path = svg("path", { d: pathData(zone.polygons), "data-zone": zone.name, "fill-rule": "evenodd" });
    zone.path.append(svg("title", {}, zone.name));
    zonesLayer.append(zone.path);
    state.zones.push(zone);
  }
  map.replaceChildren(zonesLayer, svg("g", { id: "dots" }), svg("g", { id: "markers" }));
  map.addEventListener("click", onMapClick);
  map.addEventListener("mousemove", onMapHover);
  map.addEventListener("mouseleave", () => { $("map-caption").hidden = true; });
  $("map-status").hidden = true;
}

// Shades each zone by its share of all confirmed rides; the busiest zone gets the full colour.
function shadeZones(stats) {
  const total = stats && stats.rides ? stats.rides : 0;
  const byName = new Map((stats && stats.zones ? stats.zones : []).map((z) => [z.name, z]));
  const maxShare = Math.max(0, ...[...byName.values()].map((z) => (total ? z.rides / total : 0)));
  for (const zone of state.zones) {
    const z = byName.get(zone.name);
    const share = z && total ? z.rides / total : 0;
    zone.share = share;
    zone.rides = z ? z.rides : 0;
    zone.path.style.setProperty("--t", maxShare ? (share / maxShare).toFixed(3) : "0");
  }
  $("ramp-max").textContent = `${(maxShare * 100).toFixed(maxShare < 0.1 ? 1 : 0)}%`;
}

// The latest pickups as dots, oldest first so that the newest are drawn on top.
function drawPickups(pickups) {
  const dots = (pickups || []).slice().reverse()
    .filter((p) => Number.isFinite(p.lat) && Number.isFinite(p.lon))
    .map((p) => {
      const [x, y] = project([p.lon, p.lat]);
      // No <title>: dots let clicks through to the zone under them (a click sets a pickup or drop-off).
      return svg("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 5, class: `dot ${statusClass(p.status)}` });
    });
  document.getElementById("dots").replaceChildren(...dots);
}

function statusClass(status) {
  return ["requested", "confirmed", "rejected"].includes(status) ? status : "requested";
}

// Pickup and drop-off pins, joined by a dashed line once both are set.
function drawMarkers() {
  const layer = document.getElementById("markers");
  if (!layer) return;
  const items = [];
  if (state.pickup && state.dropoff) {
    const [x1, y1] = project([state.pickup.lon, state.pickup.lat]);
    const [x2, y2] = project([state.dropoff.lon, state.dropoff.lat]);
    items.push(svg("line", { x1, y1, x2, y2, class: "route" }));
  }
  for (const [which, letter] of [["pickup", "P"], ["dropoff", "D"]]) {
    const point = state[which];
    if (!point) continue;
    const [x, y] = project([point.lon, point.lat]);
    const pin = svg("g", { class: `pin ${which}`, transform: `translate(${x.toFixed(1)} ${y.toFixed(1)})` });
    pin.append(svg("path", { d: "M0 0 C-4 -9 -13 -14 -13 -24 A13 13 0 1 1 13 -24 C13 -14 4 -9 0 0Z" }),
      svg("text", { x: 0, y: -19 }, letter));
    items.push(pin);
  }
  layer.replaceChildren(...items);
}

function svgPoint(evt) {
  const map = $("map");
  const pt = new DOMPoint(evt.clientX, evt.clientY).matrixTransform(map.getScreenCTM().inverse());
  return unproject([pt.x, pt.y]);
}

// Clicks alternate: pickup, drop-off, pickup, ... Water is not a place to be picked up.
function onMapClick(evt) {
  const [lon, lat] = svgPoint(evt);
  const zone = zoneAt(lon, lat);
  if (!zone) {
    setHint("That is water: click inside a zone");
    return;
  }
  const which = state.nextClick;
  setPoint(which, { lon, lat, zone: zone.name, fromMap: true });
  state.nextClick = which === "pickup" ? "dropoff" : "pickup";
  setHint(`Next click sets the ${state.nextClick === "pickup" ? "pickup" : "drop-off"}`);
}

function onMapHover(evt) {
  const caption = $("map-caption");
  const target = evt.target.closest ? evt.target.closest("[data-zone]") : null;
  const zone = target && state.zones.find((z) => z.path === target);
  if (!zone) { caption.hidden = true; return; }
  const share = zone.share ? ` · ${(zone.share * 100).toFixed(1)}% of rides` : "";
  caption.textContent = `${zone.name}${zone.rides ? ` · ${fmtInt(zone.rides)} rides` : ""}${share}`;
  caption.hidden = false;
}

function setHint(text) {
  $("map-hint").textContent = text;
}

// ------------------------------------------------------------------------------------ live figures (SSE)

function connectEvents() {
  const source = new EventSource("/events");
  source.addEventListener("open", () => setConnection("live"));
  source.addEventListener("live", (evt) => {
    let data;
    try {
      data = JSON.parse(evt.data);
    } catch (_) {
      return; // a torn or foreign message: the next one comes within a second
    }
    state.lastEventAt = Date.now();
    setConnection("live");
    render(data);
  });
  source.addEventListener("error", () => {
    // EventSource retries by itself while CONNECTING; CLOSED means the server refused the stream (an
    // HTTP error), after which the browser gives up, so start a new one a little later.
    if (source.readyState === EventSource.CLOSED) {
      setConnection("reconnecting");
      setTimeout(connectEvents, 3000);
    } else {
      setConnection("reconnecting");
    }
  });
}

function setConnection(stateName) {
  const conn = $("conn");
  conn.dataset.state = stateName;
  const words = { live: "live", reconnecting: "reconnecting…", stale: "waiting for data…" };
  $("conn-text").textContent = words[stateName] || "connecting…";
}

// An open stream that has gone quiet is not live, whatever the socket says.
function watchStaleness() {
  setInterval(() => {
    if ($("conn").dataset.state === "live" && state.lastEventAt && Date.now() - state.lastEventAt > STALE_MS) {
      setConnection("stale");
    }
  }, 1000);
}

function render(data) {
  const stats = data.stats || {};
  renderCounts(data.counts || {});
  if (state.view) {
    shadeZones(stats);
    drawPickups(data.pickups);
  }
  renderPerMinute(stats.per_minute || [], data.at);
  renderZones(stats);
  renderRejections(data.rejections || []);
  renderLag(data.lag || []);
  $("updated").textContent = data.at ? `updated ${fmtTime(data.at)}` : "";
}

function renderCounts(counts) {
  for (const key of ["requested", "confirmed", "rejected"]) $(`count-${key}`).textContent = fmtInt(counts[key]);
}

// The API keys minutes in UTC ("HH:MM"); the page shows local time like every other time on it. The minute's
// date is the one that puts it at or before the snapshot's own time.
function localMinute(hhmm, atIso) {
  const at = new Date(atIso);
  const [h, m] = String(hhmm).split(":").map(Number);
  if (Number.isNaN(at.getTime()) || !Number.isInteger(h) || !Number.isInteger(m)) return String(hhmm);
  const t = new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate(), h, m));
  if (t - at > 60000) t.setUTCDate(t.getUTCDate() - 1);
  return t.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", hour12: false });
}

// Bars with their numbers above and every third minute below, the current minute in the accent colour.
function renderPerMinute(minutes, atIso) {
  const chart = $("per-minute");
  const W = 420, H = 112, top = 16, bottom = 18, gap = 6;
  const n = Math.max(minutes.length, 1);
  const barW = (W - gap * (n - 1)) / n;
  const max = Math.max(1, ...minutes.map((m) => m.rides || 0));
  const items = [svg("line", { x1: 0, x2: W, y1: H - bottom + 0.5, y2: H - bottom + 0.5, class: "axis" })];
  minutes.forEach((m, i) => {
    const rides = m.rides || 0;
    const label = localMinute(m.minute, atIso);
    const h = ((H - top - bottom) * rides) / max;
    const x = i * (barW + gap);
    const last = i === minutes.length - 1;
    const bar = svg("rect", { x: x.toFixed(1), y: (H - bottom - h).toFixed(1), width: barW.toFixed(1),
      height: Math.max(h, rides ? 1 : 0).toFixed(1), rx: 2, class: last ? "bar now" : "bar" });
    bar.append(svg("title", {}, `${label}: ${rides} rides`));
    items.push(bar);
    // Numbers on the bars that have rides only: fifteen zeros would drown the ones that matter.
    if (rides) {
      const y = (H - bottom - h - 4).toFixed(1);
      items.push(svg("text", { x: (x + barW / 2).toFixed(1), y, class: "val" }, String(rides)));
    }
    if ((minutes.length - 1 - i) % 3 === 0) {
      items.push(svg("text", { x: (x + barW / 2).toFixed(1), y: H - 5, class: "tick" }, last ? "now" : label));
    }
  });
  chart.replaceChildren(...items);
  const total = minutes.reduce((sum, m) => sum + (m.rides || 0), 0);
  $("pm-total").textContent = `${fmtInt(total)} confirmed in ${minutes.length} min`;
}

function renderZones(stats) {
  const total = stats.rides || 0;
  const top = (stats.zones || []).slice(0, TOP_ZONES);
  const busiest = Math.max(1, ...top.map((z) => z.rides || 0));
  const rows = top.map((z) => {
    const share = total ? z.rides / total : 0;
    // The bar is relative to the busiest zone, as the map's shading is; the number is the true share.
    const bar = el("span", { class: "share-bar" });
    bar.append(el("i", { style: `width:${((100 * (z.rides || 0)) / busiest).toFixed(1)}%` }));
    const shareCell = el("td", { class: "share" });
    shareCell.append(bar, el("span", {}, `${(share * 100).toFixed(1)}%`));
    const tr = el("tr");
    tr.append(el("td", { class: "zone-name", title: z.name }, z.name), el("td", { class: "n" }, fmtInt(z.rides)),
      shareCell, el("td", { class: "n" }, fmtMinutes(z.mean_eta_min)),
      el("td", { class: "n" }, fmtMoney(z.mean_fare, stats.currency)));
    return tr;
  });
  $("zones").tBodies[0].replaceChildren(...rows);
  $("zones-empty").hidden = rows.length > 0;
  const overall = [`${fmtInt(total)} rides`, fmtMinutes(stats.mean_eta_min), fmtMoney(stats.mean_fare, stats.currency)];
  $("zones-overall").textContent = total ? overall.join(" · ") : "";
}

function renderRejections(rejections) {
  const items = rejections.map((r) => {
    const li = el("li");
    const meta = el("span", { class: "meta" });
    meta.append(el("code", { title: r.ride_id }, r.ride_id), el("span", {}, fmtTime(r.at)));
    li.append(el("span", { class: "reason" }, r.reason), meta);
    return li;
  });
  $("rejections").replaceChildren(...items);
  $("rejections-empty").hidden = items.length > 0;
}

function renderLag(lag) {
  const rows = lag.map((g) => {
    const known = typeof g.lag === "number";
    const level = !known ? "unknown" : g.lag === 0 ? "ok" : g.lag < 100 ? "some" : "high";
    const cell = el("td", { class: `n lag ${level}` });
    cell.append(el("i", { class: "led", "aria-hidden": "true" }),
      document.createTextNode(known ? fmtInt(g.lag) : "unknown"));
    cell.title = level === "unknown" ? "the group has committed nothing yet" : `${g.lag} records behind`;
    const topic = el("td", { class: "clip" });
    topic.append(g.topic ? el("code", { title: g.topic }, g.topic) : el("span", { class: "muted" }, "–"));
    const tr = el("tr");
    tr.append(el("td", { class: "clip", title: g.group }, g.group), topic, cell);
    return tr;
  });
  $("lag").tBodies[0].replaceChildren(...rows);
  $("lag-empty").hidden = rows.length > 0;
}

// ------------------------------------------------------------------------------------------ ride form

function fillZoneSelects() {
  const names = state.zones.map((z) => z.name).sort((a, b) => a.localeCompare(b));
  for (const id of ["pickup-zone", "dropoff-zone"]) {
    const select = $(id);
    select.append(...names.map((name) => el("option", { value: name }, name)));
    select.addEventListener("change", () => onZoneSelected(id === "pickup-zone" ? "pickup" : "dropoff"));
  }
}

// Choosing a zone in a list puts its pin at the zone's label point, which is what is sent.
function onZoneSelected(which) {
  const select = $(which === "pickup" ? "pickup-zone" : "dropoff-zone");
  if (select.value === "@map") return;
  const zone = state.zones.find((z) => z.name === select.value);
  select.querySelector('option[value="@map"]')?.remove();
  const point = zone && Array.isArray(zone.label)
    ? { lon: zone.label[0], lat: zone.label[1], zone: zone.name, fromMap: false } : null;
  setPoint(which, point);
}

// A point clicked on the map shows in its list as an entry of its own, naming the zone it is in.
function setPoint(which, point) {
  state[which] = point;
  state.submissionKey = null;
  const select = $(which === "pickup" ? "pickup-zone" : "dropoff-zone");
  if (point && point.fromMap) {
    let option = select.querySelector('option[value="@map"]');
    if (!option) {
      option = el("option", { value: "@map" });
      select.insertBefore(option, select.options[1] || null);
    }
    option.textContent = `${point.zone} · map point ${point.lat.toFixed(4)}, ${point.lon.toFixed(4)}`;
    select.value = "@map";
  }
  drawMarkers();
}

function customerId() {
  const key = "rides.customer_id";
  try {
    let id = localStorage.getItem(key);
    if (!id) {
      id = `web-${randomUUID().slice(0, 13).replace("-", "")}`;
      localStorage.setItem(key, id);
    }
    return id;
  } catch (_) {
    // Storage can be off (private mode, policies); a per-page id still makes a valid request.
    state.fallbackCustomer = state.fallbackCustomer || `web-${randomUUID().slice(0, 13).replace("-", "")}`;
    return state.fallbackCustomer;
  }
}

// crypto.randomUUID exists only in secure contexts; the page may be served over plain HTTP on a LAN.
function randomUUID() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const LABELS = { name: "Name", email: "Email", passengers: "Passengers" };

// The browser's own bubbles differ between browsers and vanish; one line under the form says it the same way
// the service's own answers do.
function formProblem() {
  for (const [id, label] of Object.entries(LABELS)) {
    const input = $(id);
    if (!input.value.trim()) return `${label} is required`;
    if (!input.checkValidity()) {
      return id === "passengers" ? "Passengers must be a whole number from 1 to 8" : `${label} is not valid`;
    }
  }
  if (!state.pickup) return "Choose a pickup zone, or click the map";
  if (!state.dropoff) return "Choose a drop-off zone, or click the map again";
  return null;
}

async function submitRide(evt) {
  evt.preventDefault();
  const problem = formProblem();
  if (problem) return showError(problem);
  showError(null);
  const body = {
    customer_id: customerId(),
    customer_email: $("email").value.trim(),
    customer_name: $("name").value.trim(),
    pickup: { lat: state.pickup.lat, lon: state.pickup.lon },
    dropoff: { lat: state.dropoff.lat, lon: state.dropoff.lon },
    passengers: Number($("passengers").value),
  };
  const seats = `${body.passengers} passenger${body.passengers === 1 ? "" : "s"}`;
  const route = `${state.pickup.zone} → ${state.dropoff.zone} · ${seats}`;
  // One key per submission: a retry of the same form after a 503 or a lost answer sends the same key, so
  // the service can answer with the ride it already accepted instead of requesting a second one.
  state.submissionKey = state.submissionKey || randomUUID();
  const button = $("request");
  button.disabled = true;
  button.textContent = "Requesting…";
  try {
    const response = await fetch("/rides", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": state.submissionKey },
      body: JSON.stringify(body),
    });
    const answer = await readJson(response);
    if (response.status === 202 && answer && answer.ride_id) {
      state.submissionKey = null;
      rememberRider(body);
      followRide(answer, route);
    } else {
      if (response.status !== 503) state.submissionKey = null;
      showError(errorLine(response, answer));
    }
  } catch (_) {
    showError("Could not reach the service; check the connection and try again");
  } finally {
    button.disabled = false;
    button.textContent = "Request ride";
  }
}

async function readJson(response) {
  try {
    return await response.json();
  } catch (_) {
    return null;
  }
}

// FastAPI's own 422 has a list of problems; ours has one line. Either way: one readable line.
function errorLine(response, answer) {
  let detail = answer && answer.detail;
  if (Array.isArray(detail)) {
    detail = detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  if (typeof detail !== "string" || !detail) {
    detail = response.status === 413 ? "The request is too large"
      : `The service answered ${response.status} ${response.statusText}`;
  }
  const retry = response.headers.get("Retry-After");
  const saysWhen = /again|retry/i.test(detail);
  return response.status === 503 && retry && !saysWhen ? `${detail} (try again in ${retry} s)` : detail;
}

function showError(text) {
  const line = $("form-error");
  line.textContent = text || "";
  line.hidden = !text;
}

function rememberRider(body) {
  try {
    localStorage.setItem("rides.rider", JSON.stringify({ name: body.customer_name, email: body.customer_email }));
  } catch (_) { /* remembering is a convenience */ }
}

function restoreRider() {
  try {
    const rider = JSON.parse(localStorage.getItem("rides.rider") || "null");
    if (rider) { $("name").value = rider.name || ""; $("email").value = rider.email || ""; }
  } catch (_) { /* nothing to restore */ }
}

// ------------------------------------------------------------------------------------------ my rides

function followRide(accepted, route) {
  const list = $("my-rides");
  let row = list.querySelector(`[data-ride-id="${CSS.escape(accepted.ride_id)}"]`);
  if (!row) {
    row = el("li", { "data-ride-id": accepted.ride_id, "data-status": "requested" });
    list.prepend(row);
  }
  renderRide(row, { ride_id: accepted.ride_id, status: "requested" }, route);
  const url = accepted.status_url || `/rides/${encodeURIComponent(accepted.ride_id)}`;
  // The 202 already says "requested"; asking at once would likely meet a 404 (not known yet), which the
  // browser logs as an error, so the first question waits one interval like the rest.
  const startedAt = Date.now();
  setTimeout(() => pollRide(row, url, route, startedAt), POLL_MS);
}

async function pollRide(row, url, route, startedAt) {
  let ride = null;
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (response.ok) ride = await readJson(response);
  } catch (_) { /* the service is away for a moment: ask again */ }
  // Only a change is drawn: redrawing the same row twice a second would restart its spinner each time.
  if (ride && ride.status && ride.status !== row.dataset.status) renderRide(row, ride, route);
  if (ride && (ride.status === "confirmed" || ride.status === "rejected")) return;
  const delay = Date.now() - startedAt < POLL_FAST_FOR_MS ? POLL_MS : SLOW_POLL_MS;
  setTimeout(() => pollRide(row, url, route, startedAt), delay);
}

function renderRide(row, ride, route) {
  const status = statusClass(ride.status);
  row.dataset.status = status;
  const head = el("div", { class: "ride-head" });
  head.append(el("span", { class: `badge ${status}` }, status), el("code", { class: "ride-id" }, ride.ride_id));
  const detail = el("div", { class: "ride-detail" });
  if (status === "confirmed") {
    detail.append(
      field("Driver", ride.driver_id, "driver"),
      field("Pickup in", fmtMinutes(ride.pickup_eta_minutes), "eta"),
      field("Fare", fmtMoney(ride.fare, ride.currency), "fare"),
    );
    if (typeof ride.distance_km === "number") {
      detail.append(field("Trip", `${ride.distance_km.toFixed(1)} km`, "distance"));
    }
  } else if (status === "rejected") {
    detail.append(field("Reason", ride.reason || "not given", "reason"));
  } else {
    detail.append(el("span", { class: "waiting" }, "Waiting for the pipeline to decide…"));
  }
  row.replaceChildren(head, el("div", { class: "ride-route" }, route), detail);
}

function field(label, value, name) {
  const span = el("span", { class: "kv" });
  span.append(el("span", { class: "k" }, label), el("span", { class: "v", "data-field": name }, value ?? "–"));
  return span;
}

// ----------------------------------------------------------------------------------------------- start

async function main() {
  restoreRider();
  $("ride-form").addEventListener("submit", submitRide);
  $("ride-form").addEventListener("input", () => { state.submissionKey = null; });
  connectEvents();
  watchStaleness();
  try {
    const response = await fetch("/city");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    drawMap(await response.json());
    fillZoneSelects();
  } catch (err) {
    $("map-status").textContent = `The city could not be loaded (${err.message}); reload to try again`;
  }
}

main();
