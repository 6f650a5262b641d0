/* Usage dashboard charts (templates/portal/usage.html).
 *
 * Draws the series the page embeds with Django's json_script (#usage-data) into the
 * [data-chart] boxes with uPlot (static/vendor/uplot). The tables on the page hold the
 * same numbers, so without JavaScript, or if uPlot fails to load, nothing is lost.
 * htmx swaps in a new dashboard when a filter changes; "htmx:load" then draws it.
 */
(function () {
  "use strict";

  var HEIGHT = 220;
  var ERROR_RED = "#cf222e";
  var SECOND = "#bf8700"; // amber: tells completion tokens from prompt tokens at a glance
  var MUTED = "#57606a";
  var charts = [];

  function brand() {
    var value = getComputedStyle(document.documentElement).getPropertyValue("--brand").trim();
    return value || "#1f6feb";
  }

  // A translucent fill of a #rrggbb colour; other notations get no fill rather than a wrong one.
  function wash(colour, alpha) {
    var m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(colour);
    if (!m) return undefined;
    return "rgba(" + parseInt(m[1], 16) + "," + parseInt(m[2], 16) + "," + parseInt(m[3], 16) + "," + alpha + ")";
  }

  var HOUR = 3600;
  var DAY = 24 * HOUR;

  // The charts keep the same clock as the tables and the CSV: UTC, not the browser's zone.
  function utc(ts) {
    return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC");
  }

  // Tick steps for counts: whole numbers only, or "1, 1, 2, 2" would label half-calls.
  var WHOLE = [];
  for (var p = 1; p <= 1e12; p *= 10) WHOLE.push(p, 2 * p, 5 * p);

  var integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  var decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

  function show(format, unit) {
    return function (u, v) {
      return v == null ? "—" : format.format(v) + (unit || "");
    };
  }

  function series(label, colour, format, extra) {
    var s = { label: label, stroke: colour, width: 2, value: format, points: { size: 5 } };
    for (var key in extra) s[key] = extra[key];
    return s;
  }

  function specs(data) {
    var per = data.unit === "hour" ? "per hour" : "per day";
    var b = brand();
    return {
      requests: {
        axis: "calls " + per,
        format: integer,
        incrs: WHOLE,
        data: [data.t, data.requests, data.errors],
        series: [
          series("Requests", b, show(integer), { fill: wash(b, 0.12) }),
          series("Errors", ERROR_RED, show(integer), { fill: wash(ERROR_RED, 0.12) }),
        ],
      },
      tokens: {
        axis: "tokens " + per,
        format: integer,
        incrs: WHOLE,
        data: [data.t, data.prompt_tokens, data.completion_tokens],
        series: [
          series("Prompt tokens", b, show(integer)),
          series("Completion tokens", SECOND, show(integer)),
        ],
      },
      latency: {
        axis: "milliseconds",
        format: decimal,
        // Buckets without calls are null: a gap, not a false "0 ms".
        data: [data.t, data.latency_avg_ms, data.latency_max_ms],
        series: [
          series("Average latency", b, show(decimal, " ms")),
          series("Slowest call", MUTED, show(decimal, " ms"), { dash: [6, 4] }),
        ],
      },
    };
  }

  function draw() {
    var source = document.getElementById("usage-data");
    if (!source || typeof uPlot === "undefined") return;
    var data = JSON.parse(source.textContent);
    var dayLabel = uPlot.fmtDate("{MMM} {D}");
    var hourLabel = uPlot.fmtDate("{HH}:00");
    var when = uPlot.fmtDate(data.unit === "day" ? "{WWW} {MMM} {D}" : "{WWW} {MMM} {D}, {HH}:00");
    var all = specs(data);
    // Shown only now that something will be drawn in it (see the template).
    document.querySelectorAll(".usage-charts[hidden]").forEach(function (box) { box.hidden = false; });
    document.querySelectorAll("[data-chart]").forEach(function (box) {
      if (box.dataset.drawn) return;
      var spec = all[box.dataset.chart];
      if (!spec) return;
      box.dataset.drawn = "1";
      var opts = {
        width: Math.max(box.clientWidth, 280),
        height: HEIGHT,
        tzDate: utc,
        scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; } } },
        axes: [
          data.unit === "day"
            ? {
                label: "Day (UTC)",
                stroke: MUTED,
                // Whole days only: uPlot would otherwise add noon ticks between them.
                incrs: [DAY, 2 * DAY, 7 * DAY, 14 * DAY],
                values: function (u, ticks) { return ticks.map(function (ts) { return dayLabel(utc(ts)); }); },
              }
            : {
                label: "Hour (UTC)",
                stroke: MUTED,
                // 24-hour clock like the tables; the date at midnight.
                incrs: [HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR],
                values: function (u, ticks) {
                  return ticks.map(function (ts) {
                    var d = utc(ts);
                    return d.getHours() === 0 ? dayLabel(d) : hourLabel(d);
                  });
                },
              },
          {
            label: spec.axis,
            stroke: MUTED,
            size: 64,
            incrs: spec.incrs,
            values: function (u, ticks) { return ticks.map(function (v) { return spec.format.format(v); }); },
          },
        ],
        series: [
          { label: "UTC", value: function (u, ts) { return ts == null ? "—" : when(utc(ts)); } },
        ].concat(spec.series),
        legend: { live: true },
        cursor: { points: { size: 7 } },
      };
      charts.push({ box: box, plot: new uPlot(opts, spec.data, box) });
    });
  }

  function resize() {
    charts = charts.filter(function (chart) {
      if (!document.body.contains(chart.box)) {
        chart.plot.destroy(); // swapped out by htmx
        return false;
      }
      chart.plot.setSize({ width: Math.max(chart.box.clientWidth, 280), height: HEIGHT });
      return true;
    });
  }

  // Set the filter form to what the dashboard shows (data-* on #usage-state).
  function syncFilters() {
    var state = document.getElementById("usage-state");
    var form = document.querySelector("form.usage-filters");
    if (!state || !form) return;
    ["window", "app", "product"].forEach(function (name) {
      if (form.elements[name]) form.elements[name].value = state.dataset[name] || "";
    });
  }

  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(resize, 150);
  });
  document.addEventListener("htmx:load", function () {
    resize(); // drops the charts of the dashboard just replaced
    draw();
  });
  // Back/forward from htmx's history cache restores a copy of the HTML: the canvases come
  // back blank and the selects show the options the page was first served with.
  document.addEventListener("htmx:historyRestore", function () {
    charts.forEach(function (chart) { chart.plot.destroy(); });
    charts = [];
    document.querySelectorAll("[data-chart]").forEach(function (box) {
      box.textContent = "";
      delete box.dataset.drawn;
    });
    syncFilters();
    draw();
  });
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", draw);
  } else {
    draw();
  }
})();
