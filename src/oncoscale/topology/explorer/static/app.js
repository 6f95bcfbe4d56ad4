// oncoscale topology explorer: linked spine, persistence slider, histograms with brushing,
// density scatter and density parallel coordinates, all drawn from the cube's JSON API.
"use strict";

(() => {
  const state = {
    meta: null,
    level: 0,          // slider position: 0 = no simplification
    p: 0,              // normalised persistence sent to the server
    selection: null,   // null (all data) | {seg} | {max} | {min}
    brush: null,       // null | {axis, lo, hi} in data units
    scatter: [0, 1],
    spine: null,
    segments: null,
    segmentsTotal: 0,
    totals: {},
    generation: 0,
  };
  const $ = (id) => document.getElementById(id);
  const ORANGE = "#e4572e", BLUE = "#2f6fb3", GREY = "#b8c0ca";
  const histDivs = [];

  async function api(path, params) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== null && v !== undefined) qs.set(k, String(v));
    }
    const r = await fetch(`/api/${path}?${qs}`);
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }

  // the largest divisor of the cube's resolution that is <= target (coarser views)
  function pickBins(target) {
    const B = state.meta.bins;
    for (let b = Math.min(target, B); b > 1; b--) if (B % b === 0) return b;
    return B;
  }

  function levelToP(i) {
    const L = state.meta.levels;
    if (i <= 0 || L.length === 0) return 0;
    if (i >= L.length) return Math.min(1, L[L.length - 1] + 1e-9);
    return (L[i - 1] + L[i]) / 2;   // just above level i-1: those extrema are cancelled
  }

  function selParams(withBrush) {
    const q = { p: state.p };
    const s = state.selection;
    if (s && s.seg !== undefined) q.seg = s.seg;
    if (s && s.max !== undefined) q.max = s.max;
    if (s && s.min !== undefined) q.min = s.min;
    if (withBrush && state.brush) {
      q.baxis = state.brush.axis; q.blo = state.brush.lo; q.bhi = state.brush.hi;
    }
    return q;
  }

  function setStatus(extra) {
    const st = $("status");
    // totals over the whole level (the spine and segment lists sent are capped for drawing)
    const total = state.spine ? state.spine.total.nodes : { max: 0, min: 0 };
    const nmax = total.max, nmin = total.min;
    const nseg = state.segmentsTotal;
    st.dataset.maxima = nmax;
    st.dataset.minima = nmin;
    st.dataset.segments = nseg;
    st.dataset.p = state.p;
    st.dataset.selected = state.totals.selected ?? "";
    st.dataset.brushed = state.totals.brushed ?? "";
    st.dataset.brush = state.brush ? `${state.brush.axis}:${state.brush.lo}:${state.brush.hi}` : "";
    let sel = "all data";
    if (state.selection) sel = JSON.stringify(state.selection);
    st.textContent = `p = ${state.p.toPrecision(3)} · ${nmax} maxima · ${nmin} minima · ` +
      `${nseg} segments · selection: ${sel} (${state.totals.selected ?? "…"} samples)` +
      (state.brush ? ` · brush on ${state.meta.names[state.brush.axis]}: ` +
        `[${state.brush.lo.toPrecision(4)}, ${state.brush.hi.toPrecision(4)}] ` +
        `(${state.totals.brushed} samples)` : "") + (extra || "");
  }

  function showError(e) {
    const el = $("error");
    el.hidden = !e;
    el.textContent = e ? String(e.message || e) : "";
  }

  // --- spine -------------------------------------------------------------------------------
  function drawSpine() {
    const sp = state.spine;
    const nodes = sp.nodes, links = sp.links;
    const byId = {};
    nodes.extremum.forEach((e, i) => { byId[`${nodes.kind[i]}:${e}`] = i; });
    const traces = [];
    for (const kind of ["max", "min"]) {
      const lx = [], ly = [];
      links.kind.forEach((k, i) => {
        if (k !== kind) return;
        const a = byId[`${kind}:${links.a[i]}`], b = byId[`${kind}:${links.b[i]}`];
        if (a === undefined || b === undefined) return;
        lx.push(nodes.pc1[a], links.pc1[i], nodes.pc1[b], null);
        ly.push(nodes.value[a], links.value[i], nodes.value[b], null);
      });
      traces.push({ x: lx, y: ly, mode: "lines", type: "scatter", hoverinfo: "skip",
        line: { color: kind === "max" ? "#8a94a3" : "#c9ced6", width: 1.5 },
        name: kind === "max" ? "saddles (maxima)" : "saddles (minima)" });
    }
    const vmax = Math.max(1, ...nodes.volume);
    for (const kind of ["max", "min"]) {
      const idx = nodes.kind.map((k, i) => (k === kind ? i : -1)).filter((i) => i >= 0);
      const segRow = state.selection && state.selection.seg !== undefined && state.segments ?
        state.segments.segment.indexOf(state.selection.seg) : -1;
      const selected = (i) => (state.selection && state.selection[kind] === nodes.extremum[i]) ||
        (segRow >= 0 && state.segments[kind][segRow] === nodes.extremum[i]);
      traces.push({
        type: "scatter", mode: "markers", name: kind === "max" ? "maxima" : "minima",
        x: idx.map((i) => nodes.pc1[i]), y: idx.map((i) => nodes.value[i]),
        customdata: idx.map((i) => [kind, nodes.extremum[i]]),
        text: idx.map((i) => `${kind} #${nodes.extremum[i]}<br>f = ${nodes.value[i].toPrecision(4)}` +
          `<br>volume ${nodes.volume[i]}<br>persistence ${nodes.persistence[i] < 0 ? "∞" :
            nodes.persistence[i].toPrecision(3)}`),
        hoverinfo: "text",
        marker: {
          symbol: kind === "max" ? "circle" : "triangle-down",
          size: idx.map((i) => 8 + 34 * Math.sqrt(nodes.volume[i] / vmax)),
          color: idx.map((i) => nodes.value[i]), colorscale: "Viridis",
          cmin: state.meta.lo[state.meta.d], cmax: state.meta.hi[state.meta.d],
          showscale: kind === "max", colorbar: { title: state.meta.f_name, thickness: 12 },
          line: { width: idx.map((i) => (selected(i) ? 4 : 1)),
                  color: idx.map((i) => (selected(i) ? ORANGE : "#333")) },
        },
      });
    }
    Plotly.react("spine", traces, {
      margin: { l: 50, r: 10, t: 10, b: 40 }, showlegend: false, hovermode: "closest",
      xaxis: { title: "PC 1", zeroline: false },
      yaxis: { title: state.meta.f_name, zeroline: false },
    }, { displaylogo: false, responsive: true });
  }

  // --- segments dropdown --------------------------------------------------------------------
  function fillSegments() {
    const sel = $("segment");
    const s = state.segments;
    const cur = state.selection;
    const opts = [`<option value="all">all data (${state.meta.n})</option>`];
    // the largest segments first (the server sends them so), at most 300 entries, plus the
    // current selection
    const order = s.segment.map((_, i) => i).slice(0, 300);
    order.forEach((i) => {
      const id = s.segment[i];
      opts.push(`<option value="seg:${id}">segment ${id}: max #${s.max[i]} → min #${s.min[i]}` +
        ` (${s.count[i]})</option>`);
    });
    if (cur && cur.seg !== undefined && !order.some((i) => s.segment[i] === cur.seg)) {
      opts.push(`<option value="seg:${cur.seg}">segment ${cur.seg}</option>`);
    }
    const maxNodes = state.spine.nodes;
    maxNodes.extremum.forEach((e, i) => {
      opts.push(`<option value="${maxNodes.kind[i]}:${e}">${maxNodes.kind[i] === "max" ?
        "ascending region of max" : "descending region of min"} #${e} ` +
        `(${maxNodes.volume[i]})</option>`);
    });
    sel.innerHTML = opts.join("");
    sel.value = !cur ? "all" : cur.seg !== undefined ? `seg:${cur.seg}` :
      cur.max !== undefined ? `max:${cur.max}` : `min:${cur.min}`;
  }

  function selectionStillValid() {
    const s = state.selection;
    if (!s) return true;
    if (s.seg !== undefined) return s.seg < state.segmentsTotal;
    const kind = s.max !== undefined ? "max" : "min";
    const id = s[kind];
    return state.spine.nodes.extremum.some((e, i) => e === id && state.spine.nodes.kind[i] === kind);
  }

  // --- histograms ---------------------------------------------------------------------------
  function buildHistograms() {
    const wrap = $("hists");
    wrap.innerHTML = "";
    state.meta.names.forEach((name, a) => {
      const div = document.createElement("div");
      div.className = "hist";
      div.id = `hist-${a}`;
      div.dataset.axis = a;
      wrap.appendChild(div);
      histDivs.push(div);
    });
  }

  function centres(lo, hi, bins) {
    const w = (hi - lo) / bins || 1 / bins;
    return Array.from({ length: bins }, (_, i) => lo + (i + 0.5) * w);
  }

  function drawHistogram(h) {
    const a = h.axis;
    const x = centres(h.lo, h.hi, h.bins);
    const w = (h.hi - h.lo) / h.bins || 1 / h.bins;
    const traces = [{ type: "bar", x, y: h.counts, width: w, name: "selection",
      marker: { color: h.brushed ? GREY : BLUE }, hoverinfo: "x+y" }];
    if (h.brushed) {
      traces.push({ type: "bar", x, y: h.brushed, width: w, name: "brushed",
        marker: { color: ORANGE }, hoverinfo: "x+y" });
    }
    const div = histDivs[a];
    div.dataset.total = h.counts.reduce((s, c) => s + c, 0);
    div.dataset.brushedTotal = h.brushed ? h.brushed.reduce((s, c) => s + c, 0) : "";
    const layout = {
      margin: { l: 40, r: 6, t: 22, b: 24 }, barmode: "overlay", bargap: 0,
      title: { text: state.meta.names[a], font: { size: 12 } }, showlegend: false,
      dragmode: "select", selectdirection: "h", xaxis: { fixedrange: true },
      yaxis: { fixedrange: true },
    };
    Plotly.react(div, traces, layout, { displayModeBar: false, responsive: true,
      doubleClick: false });
    if (!div.dataset.bound) {
      div.dataset.bound = "1";
      div.on("plotly_selected", (ev) => {
        if (ev && ev.range && ev.range.x) {
          const [lo, hi] = ev.range.x;
          setBrush(a, Math.min(lo, hi), Math.max(lo, hi));
        }
      });
      div.on("plotly_deselect", () => setBrush(null));
      div.on("plotly_doubleclick", () => setBrush(null));
    }
  }

  // --- density scatter ----------------------------------------------------------------------
  function drawScatter(h) {
    const xa = centres(h.lo[1], h.hi[1], h.bins);
    const ya = centres(h.lo[0], h.hi[0], h.bins);
    const z = h.counts.map((row) => row.map((c) => (c > 0 ? Math.log10(1 + c) : null)));
    const names = state.meta.names;
    $("scatter-note").textContent = state.brush && !h.brushed ?
      "(brush not applied: a third-axis brush needs a cube built with 3-D histograms)" :
      state.brush ? "(brushed)" : "";
    Plotly.react("scatter", [{ type: "heatmap", x: xa, y: ya, z, colorscale: "Viridis",
      colorbar: { title: "log10(1+n)", thickness: 12 }, hoverongaps: false }], {
      margin: { l: 50, r: 10, t: 10, b: 40 },
      xaxis: { title: names[h.b], zeroline: false, range: [h.lo[1], h.hi[1]] },
      yaxis: { title: names[h.a], zeroline: false, range: [h.lo[0], h.hi[0]] },
    }, { displaylogo: false, responsive: true });
  }

  // --- density parallel coordinates (canvas) ------------------------------------------------
  function drawPcoords(pc) {
    const cv = $("pcoords");
    const ctx = cv.getContext("2d");
    const W = cv.width, H = cv.height, top = 24, bottom = 20, left = 40, right = 40;
    ctx.clearRect(0, 0, W, H);
    const names = state.meta.names;
    const n = names.length;
    const xs = names.map((_, i) => left + (i * (W - left - right)) / Math.max(1, n - 1));
    const bins = pc.bins;
    const y = (i) => top + (1 - (i + 0.5) / bins) * (H - top - bottom);
    let notBrushed = 0;
    pc.pairs.forEach((pair, k) => {
      const counts = pair.counts;
      let mx = 0;
      counts.forEach((row) => row.forEach((c) => { if (c > mx) mx = c; }));
      if (mx === 0) return;
      const colour = state.brush && pair.brushed ? "228,87,46" : "47,111,179";
      if (state.brush && !pair.brushed) notBrushed += 1;
      ctx.lineWidth = 1;
      for (let i = 0; i < bins; i++) {
        for (let j = 0; j < bins; j++) {
          const c = counts[i][j];
          if (!c) continue;
          ctx.strokeStyle = `rgba(${colour},${(0.02 + 0.7 * Math.sqrt(c / mx)).toFixed(3)})`;
          ctx.beginPath();
          ctx.moveTo(xs[k], y(i));
          ctx.lineTo(xs[k + 1], y(j));
          ctx.stroke();
        }
      }
    });
    ctx.fillStyle = "#1d2733";
    ctx.font = "12px system-ui, sans-serif";
    ctx.textAlign = "center";
    xs.forEach((x, i) => {
      ctx.strokeStyle = "#333";
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, H - bottom); ctx.stroke();
      ctx.fillText(names[i], x, 14);
    });
    cv.dataset.pairs = pc.pairs.length;
    $("pcoords-note").textContent = notBrushed ?
      `(${notBrushed} axis pairs drawn without the brush: needs 3-D histograms)` : "";
  }

  // --- refresh ------------------------------------------------------------------------------
  async function refresh() {
    const gen = ++state.generation;
    $("status").dataset.ready = "false";
    try {
      const [spine, segs] = await Promise.all([
        api("spine", { p: state.p }), api("segments", { p: state.p })]);
      if (gen !== state.generation) return;
      state.spine = spine;
      state.segments = segs.segments;
      state.segmentsTotal = segs.total;
      if (!selectionStillValid()) state.selection = null;
      fillSegments();
      drawSpine();
      const qb = selParams(true);
      const [sx, sy] = state.scatter;
      const hists = await Promise.all(state.meta.names.map((_, a) => api("hist", { ...qb, axis: a })));
      const [scatter, pcoords] = await Promise.all([
        api("hist2d", { ...qb, a: sy, b: sx, bins: pickBins(64) }),
        api("pcoords", { ...qb, bins: pickBins(32) })]);
      if (gen !== state.generation) return;
      hists.forEach(drawHistogram);
      drawScatter(scatter);
      drawPcoords(pcoords);
      state.totals.selected = hists[0].counts.reduce((s, c) => s + c, 0);
      state.totals.brushed = hists[0].brushed ? hists[0].brushed.reduce((s, c) => s + c, 0) : null;
      showError(null);
      setStatus();
      $("status").dataset.ready = "true";
      $("status").dataset.generation = gen;
    } catch (e) {
      if (gen === state.generation) {
        showError(e);
        $("status").dataset.ready = "error";
      }
    }
  }

  function setLevel(i) {
    const L = state.meta.levels.length;
    state.level = Math.max(0, Math.min(L, i | 0));
    state.p = levelToP(state.level);
    $("persistence").value = state.level;
    $("plevel").textContent = state.p.toPrecision(3);
    return refresh();
  }

  function setBrush(axis, lo, hi) {
    state.brush = axis === null || axis === undefined ? null : { axis, lo, hi };
    return refresh();
  }

  function select(sel) {
    state.selection = sel;
    return refresh();
  }

  async function init() {
    try {
      state.meta = await api("meta");
    } catch (e) {
      showError(e);
      return;
    }
    const m = state.meta;
    const slider = $("persistence");
    slider.max = m.levels.length;
    slider.addEventListener("input", () => setLevel(Number(slider.value)));
    $("segment").addEventListener("change", (ev) => {
      const v = ev.target.value;
      if (v === "all") return select(null);
      const [kind, id] = v.split(":");
      return select({ [kind]: Number(id) });
    });
    $("clear").addEventListener("click", () => setBrush(null));
    const opts = m.names.map((n, i) => `<option value="${i}">${n}</option>`).join("");
    $("sx").innerHTML = opts;
    $("sy").innerHTML = opts;
    state.scatter = [0, Math.min(1, m.d)];
    if (m.d === 0) state.scatter = [0, 0];
    $("sx").value = state.scatter[0];
    $("sy").value = state.scatter[1];
    const onAxes = () => {
      const a = Number($("sx").value), b = Number($("sy").value);
      if (a === b) return;
      state.scatter = [a, b];
      refresh();
    };
    $("sx").addEventListener("change", onAxes);
    $("sy").addEventListener("change", onAxes);
    buildHistograms();
    // start simplified: about 30 extrema (plus the survivors) remain
    state.level = Math.max(0, m.levels.length - 30);
    slider.value = state.level;
    state.p = levelToP(state.level);
    $("plevel").textContent = state.p.toPrecision(3);
    await refresh();
    document.getElementById("spine").on("plotly_click", (ev) => {
      const pt = ev.points && ev.points[0];
      if (pt && pt.customdata) select({ [pt.customdata[0]]: pt.customdata[1] });
    });
  }

  window.oncoscale = { state, refresh, setBrush, setLevel, select };
  document.addEventListener("DOMContentLoaded", init);
})();
