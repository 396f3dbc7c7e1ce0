// conveyor ui: live updates over Server-Sent Events, charts, progress bars and the
// CSRF header for htmx requests. Values only ever reach the page through textContent
// and SVG attributes, never innerHTML, so nothing a job carries can become markup.
"use strict";

(function () {
  const PRIORITIES = ["critical", "high", "normal", "low"];
  const SVG = "http://www.w3.org/2000/svg";

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrfToken();
  });

  function fillBars(root) {
    root.querySelectorAll(".fill[data-pct]").forEach(function (el) {
      el.style.width = Math.max(0, Math.min(100, Number(el.dataset.pct) || 0)) + "%";
    });
  }

  function follow(url, onData) {
    const source = new EventSource(url);
    source.onmessage = function (event) { onData(JSON.parse(event.data)); };
    source.addEventListener("end", function () { source.close(); });
    return source;
  }

  function formatMs(value) {
    if (value === null || value === undefined) { return "–"; }
    return value >= 10 ? Math.round(value).toLocaleString("en") + " ms" : value.toFixed(1) + " ms";
  }

  function formatWhen(iso) {
    return iso ? iso.replace("T", " ").slice(0, 19) : "";
  }

  function chart(svg, seriesByPriority) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    const width = 600, height = 160, pad = 4;
    let max = 1, length = 0;
    PRIORITIES.forEach(function (p) {
      const values = seriesByPriority[p] || [];
      length = Math.max(length, values.length);
      values.forEach(function (v) { if (v !== null && v > max) { max = v; } });
    });
    const axis = document.createElementNS(SVG, "text");
    axis.setAttribute("x", "4"); axis.setAttribute("y", "12"); axis.setAttribute("class", "axis");
    axis.textContent = String(Math.round(max));
    svg.appendChild(axis);
    PRIORITIES.forEach(function (p) {
      const values = seriesByPriority[p] || [];
      const points = [];
      values.forEach(function (v, i) {
        if (v === null) { return; }
        const x = pad + (width - 2 * pad) * (length > 1 ? i / (length - 1) : 0);
        const y = height - pad - (height - 2 * pad) * (v / max);
        points.push(x.toFixed(1) + "," + y.toFixed(1));
        const alone = (i === 0 || values[i - 1] === null) &&
          (i === values.length - 1 || values[i + 1] === null);
        if (alone) {  // a line needs two points: show a lone one as a dot
          const dot = document.createElementNS(SVG, "circle");
          dot.setAttribute("cx", x.toFixed(1));
          dot.setAttribute("cy", y.toFixed(1));
          dot.setAttribute("r", "3");
          dot.setAttribute("class", "dot p-" + p);
          svg.appendChild(dot);
        }
      });
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points.join(" "));
      line.setAttribute("class", "line p-" + p);
      svg.appendChild(line);
    });
  }

  function renderOverview(data) {
    PRIORITIES.forEach(function (p) {
      const row = document.querySelector('tr[data-priority="' + p + '"]');
      if (!row) { return; }
      row.querySelectorAll("[data-field]").forEach(function (cell) {
        const value = data.priorities[p][cell.dataset.field];
        if (cell.dataset.format === "ms") { cell.textContent = formatMs(value); }
        else { cell.textContent = value === null ? "–" : String(value); }
      });
    });
    const at = document.querySelector("[data-live-at]");
    if (at) { at.textContent = formatWhen(data.at); }
    const s = data.series;
    [["chart-complete", s.complete], ["chart-failed", s.failed], ["chart-wait", s.wait_p50_ms]]
      .forEach(function (pair) {
        const svg = document.getElementById(pair[0]);
        if (svg) { chart(svg, pair[1]); }
      });
  }

  function renderJob(job) {
    const state = document.getElementById("job-state");
    if (state) { state.textContent = job.state; state.className = "state s-" + job.state; }
    const attempts = document.getElementById("job-attempts");
    if (attempts && job.attempts !== undefined) {
      attempts.textContent = job.attempts + (job.max_attempts ? " of " + job.max_attempts : "");
    }
    const finished = document.getElementById("job-finished");
    if (finished && job.finished_at) { finished.textContent = formatWhen(job.finished_at); }
    const box = document.getElementById("job-progress");
    if (box && job.progress_pct !== null && job.progress_pct !== undefined) {
      box.hidden = false;
      const bar = document.getElementById("job-progress-bar");
      bar.dataset.pct = job.progress_pct;
      document.getElementById("job-progress-text").textContent =
        job.progress_pct + "% " + (job.progress_message || "");
      fillBars(box);
    }
    const list = document.getElementById("job-timeline");
    if (list && job.timeline) {
      while (list.firstChild) { list.removeChild(list.firstChild); }
      job.timeline.forEach(function (t) {
        const item = document.createElement("li");
        item.className = "s-" + t.state;
        const badge = document.createElement("span");
        badge.className = "state s-" + t.state;
        badge.textContent = t.state;
        item.appendChild(badge);
        let text = " attempt " + t.attempt + " · " + formatWhen(t.at);
        if (t.seconds !== null) { text += " · " + t.seconds.toFixed(2) + " s" + (t.current ? " so far" : ""); }
        item.appendChild(document.createTextNode(text));
        if (t.error) {
          const pre = document.createElement("pre");
          pre.className = "err";
          pre.textContent = t.error.type + ": " + t.error.message;
          item.appendChild(pre);
        }
        list.appendChild(item);
      });
    }
    const cancel = document.getElementById("cancel-form");
    if (cancel && ["complete", "failed", "cancelled"].indexOf(job.state) >= 0) { cancel.hidden = true; }
    const result = document.getElementById("job-result");
    if (result && job.result !== undefined && job.result !== null) {
      result.textContent = JSON.stringify(job.result, null, 2);
    }
  }

  function renderRun(run) {
    const bar = document.getElementById("replay-run-bar");
    if (bar) { bar.dataset.pct = run.pct; fillBars(bar.parentNode); }
    const text = document.getElementById("replay-run-text");
    if (text) {
      text.textContent = run.done + " of " + run.total + " replayed" +
        (run.skipped ? " (" + run.skipped + " skipped)" : "") +
        (run.finished ? " · done" : "") + (run.error ? " · stopped: " + run.error : "");
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    fillBars(document);
    const overview = document.getElementById("overview-data");
    if (overview) {
      renderOverview(JSON.parse(overview.textContent));
      follow(overview.dataset.stream, renderOverview);
    }
    const job = document.getElementById("job-data");
    if (job && ["complete", "failed", "cancelled"].indexOf(JSON.parse(job.textContent).state) < 0) {
      follow(job.dataset.stream, renderJob);
    }
    const run = document.getElementById("replay-run");
    if (run) { follow(run.dataset.stream, renderRun); }
  });
})();
