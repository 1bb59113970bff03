// The studio page. The label map is a Uint8Array of class indices (the source of truth), drawn on the canvas through
// ImageData at the model's size: no canvas path is ever stroked on it, so there is no antialiasing and every pixel is
// exactly one class. A finished stroke sends the map, as a label PNG in the model's encoding, to /api/synthesize; at
// most one request is in flight, and a newer map replaces the one waiting behind it (never a queue).
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_UNDO = 100;
const SEED_LIMIT = 2 ** 31;  // seeds the "New seed" button draws
// The seeds the API takes (int64). A seed is kept as its decimal text: a JS Number holds integers exactly only up to
// 2 ** 53, and prints 1e21 as "1e+21".
const SEED_MIN = -(2n ** 63n), SEED_MAX = 2n ** 63n - 1n;

const state = {
  model: null,         // GET /api/model
  width: 0,
  height: 0,
  map: null,           // Uint8Array [height * width] class indices
  colours: null,       // Uint8Array [classes * 3]: class index -> canvas colour
  raw: null,           // Uint8Array [classes]: class index -> value in the model's label PNGs
  tool: "brush",
  cls: 0,              // the class the brush and fill paint
  eraserCls: 0,        // the class the eraser and Clear paint
  size: 8,             // brush diameter in model pixels
  undo: [],            // maps before each edit
  redo: [],
  seed: "0",           // decimal text
  style: null,         // {base64, name, checked, previous} of the style image, or null
  result: null,        // {map, bytes, url, latencyMs, seed}: the latest image and the map it was made from
  stats: {sent: 0, received: 0, failed: 0},
  inFlight: false,
  pending: null,       // the map waiting for the request in flight to end
  error: null,
};

let canvas, context, pixels, stroke = null;

// ---------------------------------------------------------------------------------------------------- start-up

window.addEventListener("DOMContentLoaded", () => {
  start().catch((error) => showStatus(`cannot start the studio: ${error.message}`, true));
});

async function start() {
  state.model = await getJson("/api/model");
  const model = state.model;
  state.width = model.width;
  state.height = model.height;
  state.map = new Uint8Array(model.width * model.height);
  state.colours = new Uint8Array(model.classes.flatMap((cls) => cls.colour));
  state.raw = new Uint8Array(model.classes.map((cls) => cls.raw));
  state.seed = randomSeed();

  canvas = $("labels");
  canvas.width = model.width;
  canvas.height = model.height;
  document.documentElement.style.setProperty("--aspect", String(model.width / model.height));
  context = canvas.getContext("2d");
  pixels = context.createImageData(model.width, model.height);

  const info = $("model-info");
  info.textContent = `${model.source.split(/[\\/]/).pop()} · ${model.backend} · ${model.height}×${model.width} · `
    + `${model.classes.length} classes`;
  info.title = model.source;  // the whole path, on hover
  buildPalette();
  bindTools();
  bindPointer();
  bindLatent();
  bindFiles();
  bindKeys();
  selectClass(0);  // on a blank page of class 0 (sky, for a landscape model)
  render();
  updateButtons();
  await loadExamples();
  window.studio.ready = true;
  requestSynthesis();
}

function buildPalette() {
  const palette = $("palette"), eraser = $("eraser-class");
  for (const cls of state.model.classes) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "swatch";
    button.dataset.class = cls.index;
    button.setAttribute("role", "radio");
    button.title = `${cls.name} (class ${cls.index}, value ${cls.raw} in label PNGs)`;
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.style.background = `rgb(${cls.colour.join(",")})`;
    button.append(chip, document.createTextNode(cls.name));
    button.addEventListener("click", () => selectClass(cls.index));
    palette.append(button);
    eraser.append(new Option(cls.name, cls.index));
  }
  eraser.addEventListener("change", () => { state.eraserCls = Number(eraser.value); });
}

function selectClass(index) {
  state.cls = index;
  for (const button of document.querySelectorAll(".swatch")) {
    const selected = Number(button.dataset.class) === index;
    button.setAttribute("aria-pressed", String(selected));
    button.setAttribute("aria-checked", String(selected));
  }
  if (state.tool === "eraser") selectTool("brush");
}

function selectTool(tool) {
  state.tool = tool;
  for (const button of document.querySelectorAll(".tool")) {
    button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
  }
}

function bindTools() {
  for (const button of document.querySelectorAll(".tool")) {
    button.addEventListener("click", () => selectTool(button.dataset.tool));
  }
  selectTool("brush");
  const size = $("brush-size");
  size.addEventListener("change", () => { state.size = Number(size.value); });
  state.size = Number(size.value);
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("clear").addEventListener("click", () => edit(() => state.map.fill(state.eraserCls)));
}

// ---------------------------------------------------------------------------------------------------- painting

function render() {
  const data = pixels.data, map = state.map, colours = state.colours;
  for (let i = 0, p = 0; i < map.length; i++, p += 4) {
    const c = map[i] * 3;
    data[p] = colours[c];
    data[p + 1] = colours[c + 1];
    data[p + 2] = colours[c + 2];
    data[p + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
}

// A pointer position in model pixels (fractional: pixel (x, y) spans [x, x + 1) x [y, y + 1)).
function toPixel(event) {
  const box = canvas.getBoundingClientRect();
  return {x: (event.clientX - box.left) / box.width * state.width,
          y: (event.clientY - box.top) / box.height * state.height};
}

// A disc of the brush's diameter: every pixel whose centre lies inside, and always the pixel under the pointer.
function stamp(cx, cy, cls) {
  const r = state.size / 2, w = state.width, h = state.height, map = state.map;
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(w - 1, Math.floor(cx + r));
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(h - 1, Math.floor(cy + r));
  for (let y = y0; y <= y1; y++) {
    const dy = y + 0.5 - cy;
    for (let x = x0; x <= x1; x++) {
      const dx = x + 0.5 - cx;
      if (dx * dx + dy * dy <= r * r) map[y * w + x] = cls;
    }
  }
  const px = Math.floor(cx), py = Math.floor(cy);
  if (px >= 0 && px < w && py >= 0 && py < h) map[py * w + px] = cls;
}

// Discs every half pixel along the segment, so a fast pointer still leaves a closed band.
function line(from, to, cls) {
  const steps = Math.max(1, Math.ceil(Math.hypot(to.x - from.x, to.y - from.y) * 2));
  for (let i = 1; i <= steps; i++) {
    stamp(from.x + (to.x - from.x) * i / steps, from.y + (to.y - from.y) * i / steps, cls);
  }
}

// 4-connected flood fill of the region under (x, y); false when it already has the class.
function floodFill(x, y, cls) {
  const w = state.width, h = state.height, map = state.map, start = y * w + x, target = map[start];
  if (target === cls) return false;
  const stack = [start];
  map[start] = cls;
  while (stack.length) {
    const i = stack.pop(), px = i % w, py = (i - px) / w;
    if (px > 0 && map[i - 1] === target) { map[i - 1] = cls; stack.push(i - 1); }
    if (px < w - 1 && map[i + 1] === target) { map[i + 1] = cls; stack.push(i + 1); }
    if (py > 0 && map[i - w] === target) { map[i - w] = cls; stack.push(i - w); }
    if (py < h - 1 && map[i + w] === target) { map[i + w] = cls; stack.push(i + w); }
  }
  return true;
}

function paintClass() {
  return state.tool === "eraser" ? state.eraserCls : state.cls;
}

function bindPointer() {
  canvas.addEventListener("pointerdown", (event) => {
    if (stroke || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    const point = toPixel(event);
    if (state.tool === "fill") {
      const x = Math.min(state.width - 1, Math.max(0, Math.floor(point.x)));
      const y = Math.min(state.height - 1, Math.max(0, Math.floor(point.y)));
      edit(() => floodFill(x, y, state.cls));
      return;
    }
    canvas.setPointerCapture(event.pointerId);
    stroke = {id: event.pointerId, last: point, before: state.map.slice(), cls: paintClass(), frame: 0};
    stamp(point.x, point.y, stroke.cls);
    render();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!stroke || event.pointerId !== stroke.id) return;
    event.preventDefault();
    const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const move of moves.length ? moves : [event]) {
      const point = toPixel(move);
      line(stroke.last, point, stroke.cls);
      stroke.last = point;
    }
    if (!stroke.frame) stroke.frame = requestAnimationFrame(() => { if (stroke) stroke.frame = 0; render(); });
  });
  const end = (event) => {
    if (!stroke || event.pointerId !== stroke.id) return;
    const finished = stroke;
    stroke = null;
    if (finished.frame) cancelAnimationFrame(finished.frame);
    render();
    if (!sameMap(finished.before, state.map)) committed(finished.before);
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
}

// Run `change` on the map as one undoable edit; it may return false for "nothing changed".
function edit(change) {
  const before = state.map.slice();
  if (change() === false || sameMap(before, state.map)) return;
  render();
  committed(before);
}

function committed(before) {
  state.undo.push(before);
  if (state.undo.length > MAX_UNDO) state.undo.shift();
  state.redo = [];
  changed();
}

function changed() {
  render();
  updateButtons();
  requestSynthesis();
}

function undo() {
  if (!state.undo.length) return;
  state.redo.push(state.map);
  state.map = state.undo.pop();
  changed();
}

function redo() {
  if (!state.redo.length) return;
  state.undo.push(state.map);
  state.map = state.redo.pop();
  changed();
}

function updateButtons() {
  $("undo").disabled = !state.undo.length;
  $("redo").disabled = !state.redo.length;
}

function sameMap(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function bindKeys() {
  document.addEventListener("keydown", (event) => {
    if (event.target.matches("input, select, textarea")) return;
    const key = event.key.toLowerCase(), command = event.ctrlKey || event.metaKey;
    if (command && key === "z") { event.preventDefault(); event.shiftKey ? redo() : undo(); }
    else if (command && key === "y") { event.preventDefault(); redo(); }
    else if (command) return;
    else if (key === "b") selectTool("brush");
    else if (key === "f") selectTool("fill");
    else if (key === "e") selectTool("eraser");
    else if (key === "[" || key === "]") stepSize(key === "]" ? 1 : -1);
  });
}

function stepSize(step) {
  const select = $("brush-size");
  select.selectedIndex = Math.min(select.options.length - 1, Math.max(0, select.selectedIndex + step));
  state.size = Number(select.value);
}

// ---------------------------------------------------------------------------------------------------- synthesis

// Coalesced: the newest map waits while one request runs, and replaces any older map that was waiting.
function requestSynthesis() {
  state.pending = state.map.slice();
  if (!state.inFlight) pump();
}

async function pump() {
  state.inFlight = true;
  try {
    while (state.pending) {
      const map = state.pending;
      state.pending = null;
      try {
        await synthesize(map);
      } catch (error) {
        failed(`cannot make the image: ${error.message}`);
      }
    }
  } finally {
    state.inFlight = false;
  }
}

async function synthesize(map) {
  const model = state.model, png = await labelPng(map), style = state.style;
  let seed = null;
  if (model.takes_seed && !style) {
    if (!$("keep-seed").checked) setSeed(randomSeed());
    seed = state.seed;
  }
  const request = style
    ? {method: "POST", headers: {"Content-Type": "application/json"},
       body: JSON.stringify({labels: toBase64(png), seed: null, style: style.base64})}
    : {method: "POST", headers: {"Content-Type": "image/png"}, body: png};
  const url = seed === null ? "/api/synthesize" : `/api/synthesize?${new URLSearchParams({seed})}`;
  const started = performance.now();
  state.stats.sent++;
  let response;
  try {
    response = await fetch(url, request);
  } catch (error) {
    return failed(`the studio did not answer (${error.message}); is spade-deploy paint still running?`);
  }
  // The page makes valid maps, so an input refused with a style image not yet used is that image's fault.
  if (!response.ok && style && !style.checked && (response.status === 400 || response.status === 413)) {
    return refuseStyle(style, await errorText(response));
  }
  if (!response.ok) return failed(await errorText(response));
  if (style) {
    style.checked = true;
    style.previous = null;  // no way back is needed any more: let its bytes go
  }
  const bytes = new Uint8Array(await response.arrayBuffer());
  const roundTrip = performance.now() - started;
  if (state.result) URL.revokeObjectURL(state.result.url);
  state.result = {map, bytes, url: URL.createObjectURL(new Blob([bytes], {type: "image/png"})),
                  latencyMs: Number(response.headers.get("X-Model-Latency-Ms")), seed: response.headers.get("X-Seed")};
  state.stats.received++;
  $("result").src = state.result.url;
  const link = $("download-result");
  link.href = state.result.url;
  link.classList.remove("disabled");
  link.removeAttribute("aria-disabled");
  $("latency").textContent = `model ${state.result.latencyMs.toFixed(0)} ms · round trip ${roundTrip.toFixed(0)} ms`
    + (state.result.seed !== null ? ` · seed ${state.result.seed}` : "");
  // Clear only a failed synthesis's message: one about a file the user just tried to load stays, even when the
  // image of the map before it arrives after it.
  if (state.error !== null) showStatus("");
  state.error = null;
}

function failed(message) {
  state.stats.failed++;
  state.error = message;
  showStatus(message, true);
}

async function errorText(response) {
  try {
    return (await response.json()).error || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status} ${response.statusText}`;
  }
}

// ---------------------------------------------------------------------------------------------------- latent

function randomSeed() {
  return String(Math.floor(Math.random() * SEED_LIMIT));
}

// Typed text -> the seed as canonical decimal text ("007" -> "7"), or null: digits only, within the API's range.
function parseSeed(text) {
  if (!/^-?[0-9]+$/.test(text)) return null;
  const seed = BigInt(text);
  return seed >= SEED_MIN && seed <= SEED_MAX ? String(seed) : null;
}

function setSeed(seed) {
  state.seed = seed;
  $("seed").value = seed;
}

function bindLatent() {
  const model = state.model;
  if (!model.takes_seed && !model.takes_style) return;
  $("latent-group").hidden = false;
  setSeed(state.seed);
  $("seed").addEventListener("change", () => {
    const text = $("seed").value.trim(), seed = parseSeed(text);
    if (seed === null) {
      showStatus((text ? `"${text}" is not a seed` : "the seed box is empty")
        + `: a seed is a whole number from ${SEED_MIN} to ${SEED_MAX}; the seed stays ${state.seed}`, true);
      setSeed(state.seed);
      return;
    }
    showStatus("");
    setSeed(seed);
    requestSynthesis();
  });
  $("new-seed").addEventListener("click", () => { setSeed(randomSeed()); requestSynthesis(); });
  if (!model.takes_style) return;
  $("style-row").hidden = false;
  $("style-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (!file) return;
    // Checked by its first image; until then, `previous` is the way back if the server refuses it.
    state.style = {base64: toBase64(new Uint8Array(await file.arrayBuffer())), name: file.name, checked: false,
                   previous: state.style};
    showStyle();
    requestSynthesis();
  });
  $("clear-style").addEventListener("click", () => { state.style = null; showStyle(); requestSynthesis(); });
}

// A style image the server refused (no image, too large) is dropped, back to the style before it (or none): else
// every later stroke would fail on it too. The message stays, as one about a file the user tried to load.
function refuseStyle(style, reason) {
  state.stats.failed++;
  state.error = null;  // the image shown stays that of the style before; this message outlives the next one
  if (state.style === style) {
    state.style = style.previous;
    showStyle();
    requestSynthesis();
  }
  showStatus(`cannot use ${style.name} as the style image: ${reason}; back to `
    + (state.style ? `the style image ${state.style.name}` : "no style image"), true);
}

// With a style image the latent is the encoder's mean of it, so the seed has nothing to do.
function showStyle() {
  const info = $("style-info");
  info.hidden = !state.style;
  info.textContent = state.style ? `style: ${state.style.name} (the latent is its encoding; the seed is unused)` : "";
  $("clear-style").disabled = !state.style;
  for (const id of ["seed", "new-seed", "keep-seed"]) $(id).disabled = Boolean(state.style);
}

// ---------------------------------------------------------------------------------------------------- files

function bindFiles() {
  $("load-map").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (file) await loadMap(file, file.name);
  });
  $("save-map").addEventListener("click", async () => {
    download(new Blob([await labelPng(state.map)], {type: "image/png"}), "labels.png");
  });
}

// A label PNG read by the server (its checks, its words), as class indices.
async function decodeMap(body) {
  const response = await fetch("/api/labels", {method: "POST", headers: {"Content-Type": "image/png"}, body});
  if (!response.ok) throw new Error(await errorText(response));
  return new Uint8Array(await response.arrayBuffer());
}

async function loadMap(body, name) {
  try {
    const map = await decodeMap(body);
    edit(() => state.map.set(map));
    showStatus(`loaded ${name}`);
  } catch (error) {
    showStatus(`cannot load ${name}: ${error.message}`, true);
  }
}

async function loadExamples() {
  const examples = await getJson("/api/examples");
  if (!examples.length) return;
  $("examples-pane").hidden = false;
  for (const example of examples) {
    const png = new Uint8Array(await (await fetch(example.url)).arrayBuffer());
    const map = await decodeMap(png);
    const thumbnail = document.createElement("canvas");
    thumbnail.width = state.width;
    thumbnail.height = state.height;
    const image = thumbnail.getContext("2d").createImageData(state.width, state.height);
    for (let i = 0; i < map.length; i++) {
      image.data.set(state.colours.subarray(map[i] * 3, map[i] * 3 + 3), i * 4);
      image.data[i * 4 + 3] = 255;
    }
    thumbnail.getContext("2d").putImageData(image, 0, 0);
    const button = document.createElement("button");
    button.type = "button";
    button.title = example.name;
    button.className = "example";
    button.append(thumbnail);
    button.addEventListener("click", () => { edit(() => state.map.set(map)); showStatus(`loaded ${example.name}`); });
    $("examples").append(button);
  }
}

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// ---------------------------------------------------------------------------------------------------- label PNG

// The map as an 8-bit greyscale PNG of the model's raw values: the same bytes for a request and for "Save map".
async function labelPng(map) {
  const w = state.width, h = state.height, rows = new Uint8Array((w + 1) * h);
  for (let y = 0; y < h; y++) {
    // Each scanline starts with its filter type, 0 (none).
    for (let x = 0; x < w; x++) rows[y * (w + 1) + 1 + x] = state.raw[map[y * w + x]];
  }
  // CompressionStream's "deflate" is the zlib format PNG's IDAT holds.
  const compressed = new Response(new Blob([rows]).stream().pipeThrough(new CompressionStream("deflate")));
  const idat = new Uint8Array(await compressed.arrayBuffer());
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, w);
  view.setUint32(4, h);
  header.set([8, 0, 0, 0, 0], 8);  // bit depth 8, colour type 0 (grey), deflate, adaptive filters, no interlace
  return concat([new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", header), chunk("IDAT", idat),
                 chunk("IEND", new Uint8Array(0))]);
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length), view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

const CRC_TABLE = Array.from({length: 256}, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const byte of bytes) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  let offset = 0;
  for (const part of parts) { out.set(part, offset); offset += part.length; }
  return out;
}

// ---------------------------------------------------------------------------------------------------- helpers

async function getJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${await errorText(response)}`);
  return response.json();
}

function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function showStatus(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

// What tests (and curious users) can ask the page: its map, the PNG it sends, the latest image and the request counts.
window.studio = {
  ready: false,
  labelMap: () => Array.from(state.map),
  labelPng: async () => toBase64(await labelPng(state.map)),
  canvasPixels: () => Array.from(context.getImageData(0, 0, state.width, state.height).data),
  resultPng: () => (state.result ? toBase64(state.result.bytes) : null),
  status: () => ({
    sent: state.stats.sent, received: state.stats.received, failed: state.stats.failed, error: state.error,
    busy: state.inFlight || Boolean(state.pending) || Boolean(stroke),
    resultIsCurrent: Boolean(state.result) && sameMap(state.result.map, state.map),
    latencyMs: state.result ? state.result.latencyMs : null, seed: state.seed,
    resultSeed: state.result ? state.result.seed : null,
  }),
};
