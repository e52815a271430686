// Keeps the fleet page live: every 2 s it reads GET /api/v1/fleet (the same data the page was
// rendered from) and writes each value into the element that shows it. An element names its
// value by a JSON pointer relative to the nearest data-p ancestor: data-f (text, formatted by
// data-fmt), data-w (an SVG bar's width: a ratio of data-max), data-bar (a chart bar's
// height: a ratio of data-height), data-cls (a class). When the layout changed (an edge, job or name came or went) the
// page is fetched again.
"use strict";
(function () {
  const root = document.documentElement;
  const get = (data, pointer) =>
    pointer.split("/").slice(1).reduce((v, k) => (v == null ? v : v[k.replace(/~1/g, "/").replace(/~0/g, "~")]), data);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const fmt = {
    pct: (v) => (v == null ? "–" : (v * 100).toFixed(1) + " %"),
    bytes: (v) => {
      let i = 0;
      while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
      return (i === 0 ? String(v) : v.toFixed(1)) + " " + units[i];
    },
    secs: (v) => v.toFixed(0) + " s",
    text: (v) => (v == null ? "" : String(v)),
  };
  const at = (el, attr, data) => {
    const base = el.closest("[data-p]");
    return get(data, (base ? base.dataset.p : "") + el.getAttribute(attr));
  };
  function apply(data) {
    if (data.layout !== root.dataset.layout) {
      location.reload();
      return;
    }
    document.querySelectorAll("[data-f]").forEach((el) => {
      el.textContent = (fmt[el.dataset.fmt] || fmt.text)(at(el, "data-f", data));
    });
    document.querySelectorAll("[data-w]").forEach((el) => {
      const v = at(el, "data-w", data);
      el.setAttribute("width", String(Math.max(0, Math.min(1, v || 0)) * Number(el.dataset.max)));
    });
    document.querySelectorAll("svg.stack").forEach((svg) => {
      let x = 0;
      svg.querySelectorAll("rect").forEach((r) => {
        r.setAttribute("x", String(x));
        x += Number(r.getAttribute("width"));
      });
    });
    document.querySelectorAll("[data-bar]").forEach((el) => {
      const full = Number(el.dataset.height);
      const h = Math.max(0, Math.min(1, at(el, "data-bar", data) || 0)) * full;
      el.setAttribute("height", String(h));
      el.setAttribute("y", String(full - h));
    });
    document.querySelectorAll("[data-cls]").forEach((el) => {
      el.setAttribute("class", el.dataset.base + " " + at(el, "data-cls", data));
    });
    root.dataset.updated = String(data.generated_ms);
  }
  // The next poll is set once this one is done: slow answers never pile up.
  async function poll() {
    try {
      const r = await fetch("/api/v1/fleet", { credentials: "same-origin", cache: "no-store" });
      if (r.status === 401) { location.href = "/login"; return; }
      if (r.ok) apply(await r.json());
    } catch (e) {
      // The distributor is restarting or unreachable: try again at the next tick.
    }
    setTimeout(poll, 2000);
  }
  setTimeout(poll, 2000);
})();
