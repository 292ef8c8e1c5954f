// The mirror's status page: reads api/status, renders it, refreshes every few seconds.
// Plain DOM code, no framework and no build step. Everything the server sends is put into
// the page as text (textContent), never parsed as HTML.
//
// Every displayed number keeps its raw value in a data-value attribute (JSON), so tests and
// scripts can compare the page with api/status exactly.
"use strict";

(function () {
  const REFRESH_MS = 5000;
  const FETCH_TIMEOUT_MS = 4000;
  const BYTE_UNITS = ["KiB", "MiB", "GiB", "TiB", "PiB"];

  let lastSuccess = null; // Date of the last successful render
  let timer = null;

  // --- formatting ------------------------------------------------------------------------

  function oneDecimal(x) {
    return (Math.floor(x * 10 + 0.5) / 10).toFixed(1);
  }

  function formatCount(n) {
    return String(Math.trunc(n)).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  function formatBytes(n) {
    if (n < 1024) {
      return formatCount(n) + " B";
    }
    let value = n / 1024;
    let unit = 0;
    while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return oneDecimal(value) + " " + BYTE_UNITS[unit];
  }

  function formatRatio(ratio) {
    return ratio === null ? "–" : oneDecimal(ratio * 100) + "%";
  }

  function formatDuration(seconds) {
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const parts =
      d > 0 ? [[d, "d"], [h, "h"]] :
      h > 0 ? [[h, "h"], [m, "m"]] :
      m > 0 ? [[m, "m"], [s % 60, "s"]] :
      [[s, "s"]];
    const shown = parts.filter(function (p, i) { return i === 0 || p[0] > 0; });
    return shown.map(function (p) { return p[0] + p[1]; }).join(" ");
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function formatTime(unixSeconds) {
    const t = new Date(unixSeconds * 1000);
    return t.getFullYear() + "-" + pad(t.getMonth() + 1) + "-" + pad(t.getDate()) + " " +
      pad(t.getHours()) + ":" + pad(t.getMinutes()) + ":" + pad(t.getSeconds());
  }

  // --- DOM helpers -----------------------------------------------------------------------

  function byId(id) {
    return document.getElementById(id);
  }

  // Show `text` in `el` and keep the raw `value` beside it.
  function show(el, value, text) {
    el.textContent = text;
    el.dataset.value = JSON.stringify(value);
    return el;
  }

  function showId(id, value, text) {
    return show(byId(id), value, text);
  }

  function element(tag, attrs, text) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      el.setAttribute(name, value);
    }
    if (text !== undefined) {
      el.textContent = text;
    }
    return el;
  }

  function field(tag, name, value, text, cls) {
    const el = element(tag, { "data-field": name });
    if (cls) {
      el.className = cls;
    }
    return show(el, value, text);
  }

  // --- rendering -------------------------------------------------------------------------

  function renderSummary(status) {
    showId("version", status.version, status.version);
    showId("uptime", status.uptime_seconds, formatDuration(status.uptime_seconds));
    byId("uptime").title = "since " + formatTime(status.started_at);
    showId("replica", status.replica.id, status.replica.id);
    byId("replica").title = status.replica.advertise_url || "advertises no address";
    const live = status.cluster.live_replicas;
    showId("live-replicas", live, formatCount(live));

    const req = status.requests;
    showId("hit-ratio", req.hit_ratio, formatRatio(req.hit_ratio));
    showId("requests-total", req.total, formatCount(req.total));
    showId("requests-hits", req.hits, formatCount(req.hits));
    showId("requests-misses", req.misses, formatCount(req.misses));
    showId("requests-coalesced", req.coalesced, formatCount(req.coalesced));

    const bytes = status.bytes;
    showId("bytes-saved", bytes.saved, formatBytes(bytes.saved));
    showId("bytes-served", bytes.served, formatBytes(bytes.served));
    showId("bytes-from-cache", bytes.from_cache, formatBytes(bytes.from_cache));
    showId("bytes-from-upstream", bytes.from_upstream, formatBytes(bytes.from_upstream));
    showId("bytes-fetched-upstream", bytes.fetched_upstream, formatBytes(bytes.fetched_upstream));

    const cache = status.cache;
    showId("cache-total-bytes", cache.total_bytes, formatBytes(cache.total_bytes));
    showId("cache-blobs-objects", cache.blobs.objects, formatCount(cache.blobs.objects) + " blobs");
    showId("cache-blobs-bytes", cache.blobs.bytes, formatBytes(cache.blobs.bytes));
    showId(
      "cache-manifests-objects", cache.manifests.objects,
      formatCount(cache.manifests.objects) + " manifests"
    );
    showId("cache-manifests-bytes", cache.manifests.bytes, formatBytes(cache.manifests.bytes));
  }

  function rateLimitCell(ratelimit) {
    const cell = element("td", { "data-field": "upstream-ratelimit" });
    if (ratelimit === null) {
      cell.className = "muted";
      cell.textContent = "no limit reported";
      return cell;
    }
    const share = ratelimit.limit > 0 ? ratelimit.remaining / ratelimit.limit : 0;
    const text = element("span", { class: "limit-text" });
    text.append(
      field("span", "upstream-remaining", ratelimit.remaining, formatCount(ratelimit.remaining)),
      " / ",
      field("span", "upstream-limit", ratelimit.limit, formatCount(ratelimit.limit)),
      " left"
    );
    if (ratelimit.window_seconds > 0) {
      text.append(" ", field(
        "span", "upstream-window", ratelimit.window_seconds,
        "per " + formatDuration(ratelimit.window_seconds), "muted"
      ));
    }
    const bar = element("span", { class: "bar" });
    const fill = element("span", { class: "fill" });
    fill.style.width = Math.max(0, Math.min(1, share)) * 100 + "%";
    bar.append(fill);
    if (share <= 0.1) {
      cell.className = "low";
    }
    cell.append(bar, text);
    return cell;
  }

  function renderUpstreams(upstreams) {
    const rows = upstreams.map(function (up) {
      const row = element("tr", { "data-host": up.host });
      row.append(
        field("td", "upstream-host", up.host, up.host, "name"),
        field("td", "upstream-url", up.url, up.url, "muted url"),
        field("td", "upstream-requests", up.requests, formatCount(up.requests), "num"),
        field("td", "upstream-errors", up.errors, formatCount(up.errors),
          up.errors > 0 ? "num bad" : "num"),
        rateLimitCell(up.ratelimit)
      );
      return row;
    });
    byId("upstreams").replaceChildren(...rows);
  }

  // A repository's name cell: the name, and a "hosted" badge for one pushed here.
  function repositoryCell(name, hosted) {
    const cell = element("td", { class: "name" });
    cell.append(field("span", "repository", name, name));
    if (hosted) {
      cell.append(field("span", "hosted", true, "hosted", "badge"));
    }
    return cell;
  }

  function renderHosted(hosted) {
    const patterns = hosted.patterns.length > 0 ? hosted.patterns.join(", ") : "nothing";
    showId("hosted-patterns", hosted.patterns, patterns);
    const rows = hosted.repositories.map(function (name) {
      const row = element("tr", { "data-repository": name });
      row.append(repositoryCell(name, true));
      return row;
    });
    byId("hosted-repositories").replaceChildren(...rows);
    byId("hosted-repositories-empty").hidden = rows.length > 0;
    byId("hosted-repositories-more").hidden = !hosted.more;
  }

  function renderTopRepositories(top) {
    const rows = top.map(function (entry) {
      const row = element("tr", { "data-repository": entry.repository });
      row.append(
        repositoryCell(entry.repository, entry.hosted),
        field("td", "pulls", entry.pulls, formatCount(entry.pulls), "num")
      );
      return row;
    });
    byId("top-repositories").replaceChildren(...rows);
    byId("top-repositories-empty").hidden = rows.length > 0;
  }

  function renderRecentErrors(errors) {
    const rows = errors.map(function (error) {
      const row = element("tr");
      const time = field("td", "error-time", error.time, formatTime(error.time), "nowrap");
      time.title = new Date(error.time * 1000).toISOString();
      row.append(
        time,
        field("td", "error-upstream", error.upstream, error.upstream, "name nowrap"),
        field("td", "error-message", error.message, error.message)
      );
      return row;
    });
    byId("recent-errors").replaceChildren(...rows);
    byId("recent-errors-empty").hidden = rows.length > 0;
  }

  function render(status) {
    renderSummary(status);
    renderUpstreams(status.upstreams);
    renderHosted(status.hosted);
    renderTopRepositories(status.top_repositories);
    renderRecentErrors(status.recent_errors);
  }

  // --- loading ---------------------------------------------------------------------------

  async function load() {
    const abort = new AbortController();
    const timeout = setTimeout(function () { abort.abort(); }, FETCH_TIMEOUT_MS);
    try {
      const response = await fetch("api/status", {
        cache: "no-store",
        headers: { Accept: "application/json" },
        signal: abort.signal,
      });
      if (!response.ok) {
        throw new Error("HTTP " + response.status + " " + response.statusText);
      }
      return await response.json();
    } catch (err) {
      if (err.name === "AbortError") {
        throw new Error("no answer within " + FETCH_TIMEOUT_MS / 1000 + " s");
      }
      throw err;
    } finally {
      clearTimeout(timeout);
    }
  }

  function showError(err) {
    const banner = byId("error-banner");
    const since = lastSuccess === null
      ? "No data yet."
      : "Showing data from " + formatTime(lastSuccess.getTime() / 1000) + ".";
    banner.textContent = "Cannot load the mirror's status (api/status): " +
      (err && err.message ? err.message : String(err)) + ". " + since;
    banner.hidden = false;
    document.body.dataset.state = "error";
    byId("updated").textContent = "update failed";
  }

  function showSuccess() {
    lastSuccess = new Date();
    byId("error-banner").hidden = true;
    byId("updated").textContent = "updated " + formatTime(lastSuccess.getTime() / 1000);
    document.body.dataset.state = "ok";
    document.body.dataset.loaded = "true";
  }

  // Load and render once; failures end up in the banner, never as uncaught errors.
  async function refresh() {
    try {
      render(await load());
      showSuccess();
    } catch (err) {
      showError(err);
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(async function () {
      await refresh();
      schedule();
    }, REFRESH_MS);
  }

  window.statusPage = { refresh: refresh };

  refresh().then(schedule);
})();
