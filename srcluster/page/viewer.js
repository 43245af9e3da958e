"use strict";
// The comparison page's viewer. No libraries, no network, no storage APIs: it runs from file:// and inside MLflow's
// artifact viewer (an iframe sandboxed to allow-scripts, where localStorage throws).
(function () {
  const data = JSON.parse(document.querySelector('script[type="application/json"]').textContent);
  const $ = (id) => document.getElementById(id);
  const sources = data.sources;
  const byName = new Map(sources.map((s) => [s.name, s]));
  const groups = new Map(); // timeline: group -> its checkpoints in step order
  for (const s of sources) {
    if (s.group && s.step !== null) {
      if (!groups.has(s.group)) groups.set(s.group, []);
      groups.get(s.group).push(s);
    }
  }
  for (const list of groups.values()) list.sort((x, y) => x.step - y.step);
  for (const [name, list] of [...groups]) if (list.length < 2) groups.delete(name);

  const state = { image: 0, a: null, b: null, mode: "slider", split: 0.5, fit: true, zoom: 1, cx: 0, cy: 0 };

  // --- tiles: decoded only when drawn, a bounded cache so 50 images x 10 sources do not fill memory ---------------
  const TILE_CACHE = 600;
  const tiles = new Map();
  function tile(url) {
    let entry = tiles.get(url);
    if (entry) {
      tiles.delete(url); // re-insert: the Map's order is the least-recently-used order
      tiles.set(url, entry);
      return entry;
    }
    const img = new Image();
    entry = { img, ready: false };
    img.onload = () => { entry.ready = true; scheduleRender(); };
    img.onerror = () => { entry.failed = true; };
    img.src = url;
    tiles.set(url, entry);
    while (tiles.size > TILE_CACHE) tiles.delete(tiles.keys().next().value);
    return entry;
  }

  const image = () => data.images[state.image];
  const picture = (name) => image().pictures[name];

  function defaultPair() {
    const names = sources.map((s) => s.name).filter((n) => picture(n));
    const first = names.find((n) => n !== "hr" && n !== "lr") || names[0];
    const lastModel = [...names].reverse().find((n) => !["hr", "lr", "bicubic"].includes(n));
    state.a = state.a && picture(state.a) ? state.a : names.includes("bicubic") ? "bicubic" : first;
    state.b = state.b && picture(state.b) ? state.b : lastModel || names[names.length - 1];
  }

  // --- the shared view: zoom (CSS pixels per image pixel) and the image point at the centre ------------------------
  function fitZoom(w, h) {
    const im = image();
    return Math.min(w / im.width, h / im.height);
  }
  function viewFor(canvas) {
    const w = canvas.clientWidth, h = canvas.clientHeight, im = image();
    if (state.fit) return { zoom: fitZoom(w, h), cx: im.width / 2, cy: im.height / 2, w, h };
    return { zoom: state.zoom, cx: state.cx, cy: state.cy, w, h };
  }
  function toImage(view, x, y) {
    return [(x - view.w / 2) / view.zoom + view.cx, (y - view.h / 2) / view.zoom + view.cy];
  }
  function zoomAt(canvas, factor, x, y) {
    const view = viewFor(canvas);
    const [ix, iy] = toImage(view, x, y);
    const zoom = Math.min(64, Math.max(0.02, view.zoom * factor));
    Object.assign(state, { fit: false, zoom, cx: ix - (x - view.w / 2) / zoom, cy: iy - (y - view.h / 2) / zoom });
    render();
  }

  function sizeCanvas(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr)), h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    return dpr;
  }

  // Draw `name`'s picture into ctx (device pixels), clipped to screen x in [x0, x1) CSS pixels.
  function drawPicture(ctx, view, dpr, name, x0, x1) {
    const pic = picture(name), im = image();
    if (!pic) {
      ctx.fillStyle = "#888";
      ctx.font = `${14 * dpr}px sans-serif`;
      ctx.fillText(`${name}: no picture of this image`, (x0 + 12) * dpr, 40 * dpr);
      return;
    }
    const sx = pic.width / im.width, sy = pic.height / im.height; // picture pixels per image pixel (lr: 1/scale)
    ctx.save();
    ctx.beginPath();
    ctx.rect(x0 * dpr, 0, (x1 - x0) * dpr, view.h * dpr);
    ctx.clip();
    ctx.imageSmoothingEnabled = view.zoom / sx < 1; // from 100 % of the picture's own pixels: square pixels
    const T = data.tile;
    const screenX = (ix) => Math.round(((ix - view.cx) * view.zoom + view.w / 2) * dpr);
    const screenY = (iy) => Math.round(((iy - view.cy) * view.zoom + view.h / 2) * dpr);
    pic.tiles.forEach((row, r) => row.forEach((url, c) => {
      const left = screenX((c * T) / sx), right = screenX(Math.min((c + 1) * T, pic.width) / sx);
      const top = screenY((r * T) / sy), bottom = screenY(Math.min((r + 1) * T, pic.height) / sy);
      if (right < x0 * dpr || left > x1 * dpr || bottom < 0 || top > view.h * dpr) return; // off screen: not loaded
      const entry = tile(url);
      if (entry.ready) ctx.drawImage(entry.img, left, top, right - left, bottom - top);
    }));
    ctx.restore();
  }

  function clear(ctx, canvas) {
    ctx.fillStyle = "#111";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }

  function metricText(name) {
    const pic = picture(name);
    if (!pic) return "";
    return data.metrics.filter((m) => m.name in pic.metrics).map((m) => `${m.name} ${format(m.name, pic.metrics[m.name])}`).join("  ");
  }
  function label(name) {
    const s = byName.get(name);
    const text = metricText(name);
    return (s.note ? `${name} (${s.note})` : name) + (text ? `\n${text}` : "");
  }

  function renderSlider() {
    const canvas = $("slider-canvas");
    const dpr = sizeCanvas(canvas);
    const ctx = canvas.getContext("2d");
    const view = viewFor(canvas);
    clear(ctx, canvas);
    const split = state.split * view.w;
    drawPicture(ctx, view, dpr, state.a, 0, split);
    drawPicture(ctx, view, dpr, state.b, split, view.w);
    ctx.fillStyle = "#fff";
    ctx.fillRect(Math.round(split * dpr) - dpr, 0, 2 * dpr, canvas.height);
    $("label-a").textContent = label(state.a);
    $("label-b").textContent = label(state.b);
  }

  function renderGrid() {
    const grid = $("grid-view");
    const names = sources.map((s) => s.name).filter((n) => picture(n));
    if (grid.dataset.key !== `${state.image}|${names.join("|")}`) {
      grid.dataset.key = `${state.image}|${names.join("|")}`;
      grid.replaceChildren();
      const cols = Math.ceil(Math.sqrt(names.length));
      grid.style.gridTemplateColumns = `repeat(${cols}, 1fr)`;
      grid.style.gridTemplateRows = `repeat(${Math.ceil(names.length / cols)}, 1fr)`;
      for (const name of names) {
        const cell = document.createElement("div");
        cell.className = "cell";
        cell.dataset.source = name;
        const canvas = document.createElement("canvas");
        const corner = document.createElement("div");
        corner.className = "corner left";
        cell.append(canvas, corner);
        grid.append(cell);
        attachPanZoom(canvas, () => false);
        canvas.addEventListener("click", (e) => { if (!moved) setSource(e.shiftKey ? "a" : "b", name); });
      }
    }
    for (const cell of grid.children) {
      const name = cell.dataset.source, canvas = cell.firstChild;
      cell.classList.toggle("b", name === state.b);
      const dpr = sizeCanvas(canvas), ctx = canvas.getContext("2d"), view = viewFor(canvas);
      clear(ctx, canvas);
      drawPicture(ctx, view, dpr, name, 0, view.w);
      cell.lastChild.textContent = label(name);
    }
  }

  // --- metrics beside the view ---------------------------------------------------------------------------------------
  function format(metric, value) {
    if (typeof value === "string") return value; // "inf": identical to the reference
    return metric === "psnr" ? value.toFixed(2) : value.toFixed(4);
  }
  function fillTable(table, rows) {
    const head = document.createElement("tr");
    for (const text of ["source", ...data.metrics.map((m) => `${m.name} ${m.better === "higher" ? "↑" : "↓"}`)]) {
      const th = document.createElement("th");
      th.textContent = text;
      head.append(th);
    }
    table.tHead.replaceChildren(head);
    const best = data.metrics.map((m) => {
      const values = rows.map(([, v]) => v[m.name]).filter((v) => typeof v === "number");
      return values.length ? (m.better === "higher" ? Math.max(...values) : Math.min(...values)) : null;
    });
    table.tBodies[0].replaceChildren(...rows.map(([name, values]) => {
      const tr = document.createElement("tr");
      tr.dataset.source = name;
      tr.className = name === state.b ? "b" : name === state.a ? "a" : "";
      const td = document.createElement("td");
      td.textContent = name;
      tr.append(td);
      data.metrics.forEach((m, i) => {
        const cell = document.createElement("td");
        const v = values[m.name];
        cell.textContent = v === undefined ? "–" : format(m.name, v);
        if (v === best[i] && rows.length > 1) cell.className = "best";
        tr.append(cell);
      });
      tr.addEventListener("click", (e) => setSource(e.shiftKey ? "a" : "b", name));
      return tr;
    }));
  }
  function renderMetrics() {
    $("metrics-image").textContent = image().name;
    const names = sources.map((s) => s.name).filter((n) => picture(n));
    fillTable($("metrics"), names.map((n) => [n, picture(n).metrics]));
    fillTable($("means"), sources.filter((s) => data.means[s.name]).map((s) => [s.name, data.means[s.name]]));
  }

  // --- controls ------------------------------------------------------------------------------------------------------
  function fillSelect(select, options, value) {
    select.replaceChildren(...options.map(([v, text]) => {
      const option = document.createElement("option");
      option.value = v;
      option.textContent = text;
      return option;
    }));
    select.value = value;
  }
  function renderControls() {
    const names = sources.map((s) => s.name).filter((n) => picture(n));
    const numbered = names.map((n, i) => [n, i < 9 ? `${i + 1}: ${n}` : n]);
    fillSelect($("source-a"), numbered, state.a);
    fillSelect($("source-b"), numbered, state.b);
    $("mode-slider").classList.toggle("active", state.mode === "slider");
    $("mode-grid").classList.toggle("active", state.mode === "grid");
    $("slider-view").hidden = state.mode !== "slider";
    $("grid-view").hidden = state.mode !== "grid";
    const group = byName.get(state.b) && groups.get(byName.get(state.b).group);
    if (group) {
      $("group").value = byName.get(state.b).group;
      $("step").max = group.length - 1;
      $("step").value = group.findIndex((s) => s.name === state.b);
      $("step-label").textContent = `${state.b}`;
    }
  }
  let pending = false;
  function scheduleRender() {
    if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(); }); }
  }
  function render() {
    if (!data.images.length) return;
    defaultPair();
    renderControls();
    if (state.mode === "slider") renderSlider(); else renderGrid();
    renderMetrics();
    const canvas = state.mode === "slider" ? $("slider-canvas") : $("grid-view").querySelector("canvas");
    if (canvas) $("zoom-label").textContent = `${Math.round(viewFor(canvas).zoom * 100)} %`;
    document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1); // for tests
  }

  function setSource(which, name) {
    if (!byName.has(name)) return;
    state[which] = name;
    render();
  }
  function setImage(index) {
    state.image = (index + data.images.length) % data.images.length;
    $("image").value = String(state.image);
    render();
  }
  function step(delta) {
    const s = byName.get(state.b), group = s && groups.get(s.group);
    const list = group || [...groups.values()][0];
    if (!list) return;
    const at = list.findIndex((x) => x.name === state.b);
    const next = list[Math.min(list.length - 1, Math.max(0, at < 0 ? list.length - 1 : at + delta))];
    setSource("b", next.name);
  }

  // drag pans (or moves the slider's divider when grabbed near it), the wheel zooms around the cursor
  let moved = false;
  function attachPanZoom(canvas, nearDivider) {
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const rect = canvas.getBoundingClientRect();
      zoomAt(canvas, Math.exp(-e.deltaY * 0.0015), e.clientX - rect.left, e.clientY - rect.top);
    }, { passive: false });
    canvas.addEventListener("pointerdown", (e) => {
      const rect = canvas.getBoundingClientRect();
      const divider = nearDivider(e.clientX - rect.left);
      const view = viewFor(canvas);
      const start = { x: e.clientX, y: e.clientY, cx: view.cx, cy: view.cy };
      moved = false;
      canvas.setPointerCapture(e.pointerId);
      const move = (m) => {
        if (Math.abs(m.clientX - start.x) + Math.abs(m.clientY - start.y) > 2) moved = true;
        if (divider) {
          state.split = Math.min(1, Math.max(0, (m.clientX - rect.left) / rect.width));
        } else {
          Object.assign(state, {
            fit: false, zoom: view.zoom,
            cx: start.cx - (m.clientX - start.x) / view.zoom, cy: start.cy - (m.clientY - start.y) / view.zoom,
          });
        }
        scheduleRender();
      };
      const up = () => { canvas.removeEventListener("pointermove", move); canvas.removeEventListener("pointerup", up); };
      canvas.addEventListener("pointermove", move);
      canvas.addEventListener("pointerup", up);
    });
  }

  function setup() {
    $("title").textContent = data.title;
    $("note").textContent = data.note;
    if (data.left_out.length) {
      $("left-out").textContent = `Left out to keep the page small: ${data.left_out.join(", ")}.`;
    }
    if (!data.images.length) { $("note").textContent = "no images"; return; }
    fillSelect($("image"), data.images.map((im, i) => [String(i), im.name]), "0");
    if (groups.size) {
      $("timeline").hidden = false;
      fillSelect($("group"), [...groups.keys()].map((g) => [g, g]), [...groups.keys()][0]);
    }
    $("image").addEventListener("change", (e) => setImage(Number(e.target.value)));
    $("source-a").addEventListener("change", (e) => setSource("a", e.target.value));
    $("source-b").addEventListener("change", (e) => setSource("b", e.target.value));
    $("group").addEventListener("change", (e) => { const g = groups.get(e.target.value); setSource("b", g[g.length - 1].name); });
    $("step").addEventListener("input", (e) => {
      const g = groups.get($("group").value);
      setSource("b", g[Number(e.target.value)].name);
    });
    $("mode-slider").addEventListener("click", () => { state.mode = "slider"; render(); });
    $("mode-grid").addEventListener("click", () => { state.mode = "grid"; render(); });
    $("fit").addEventListener("click", () => { state.fit = true; render(); });
    $("one").addEventListener("click", () => oneToOne());
    $("help-button").addEventListener("click", () => { $("help").hidden = !$("help").hidden; });
    const slider = $("slider-canvas");
    attachPanZoom(slider, (x) => Math.abs(x - state.split * slider.clientWidth) < 8);
    document.addEventListener("keydown", onKey);
    new ResizeObserver(scheduleRender).observe($("view"));
    render();
  }

  function oneToOne() {
    const canvas = state.mode === "slider" ? $("slider-canvas") : $("grid-view").querySelector("canvas");
    const view = viewFor(canvas);
    Object.assign(state, { fit: false, zoom: 1, cx: view.cx, cy: view.cy });
    render();
  }

  function onKey(e) {
    if (e.target instanceof HTMLSelectElement || e.target instanceof HTMLInputElement || e.ctrlKey || e.metaKey || e.altKey) return;
    const names = sources.map((s) => s.name).filter((n) => picture(n));
    const canvas = state.mode === "slider" ? $("slider-canvas") : $("grid-view").querySelector("canvas");
    const digit = e.code && e.code.startsWith("Digit") ? Number(e.code.slice(5)) : NaN;
    if (digit >= 1 && digit <= 9) {
      if (names[digit - 1]) setSource(e.shiftKey ? "a" : "b", names[digit - 1]);
    } else if (e.key === " ") {
      [state.a, state.b] = [state.b, state.a];
      render();
    } else if (e.key === "ArrowLeft") setImage(state.image - 1);
    else if (e.key === "ArrowRight") setImage(state.image + 1);
    else if (e.key === "ArrowUp" || e.key === "ArrowDown") {
      const at = names.indexOf(state.b) + (e.key === "ArrowDown" ? 1 : -1);
      setSource("b", names[(at + names.length) % names.length]);
    } else if (e.key === "[") step(-1);
    else if (e.key === "]") step(1);
    else if (e.key === "s") { state.mode = "slider"; render(); }
    else if (e.key === "g") { state.mode = "grid"; render(); }
    else if (e.key === "+" || e.key === "=") zoomAt(canvas, 1.5, canvas.clientWidth / 2, canvas.clientHeight / 2);
    else if (e.key === "-") zoomAt(canvas, 1 / 1.5, canvas.clientWidth / 2, canvas.clientHeight / 2);
    else if (e.key === "0") { state.fit = true; render(); }
    else if (e.key === "z") oneToOne();
    else if (e.key === "?") $("help").hidden = !$("help").hidden;
    else return;
    e.preventDefault();
  }

  setup();
})();
