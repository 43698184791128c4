// kiln's dashboard: follows a build on its page. It polls
// /builds/{id}/live every second while the build runs (and a few times
// after it ends, while the builder's last steps are stored), redraws the
// step waterfall and appends the log lines it has not shown yet. It reads
// only kiln's own JSON and builds the DOM with textContent: nothing it
// receives is ever parsed as HTML.
"use strict";

// The device sign-in page waits for the approval: each POST waits up to
// 20 seconds on the server; once approved, the server has set the session
// cookie and the page goes home.
(function () {
  const page = document.getElementById("device");
  if (!page) return;
  const status = document.getElementById("device-status");
  async function wait() {
    try {
      const res = await fetch("/sign-in/device/wait", { method: "POST", credentials: "same-origin", cache: "no-store" });
      if (res.status === 429 || res.status === 503) {
        // Busy or restarting: the login is still pending; ask again later.
        await new Promise((r) => setTimeout(r, 1000 * (Number(res.headers.get("Retry-After")) || 3)));
        wait();
        return;
      }
      const v = await res.json();
      if (v.done) {
        status.textContent = "Approved: signing in…";
        location.assign(v.next);
        return;
      }
      if (v.error) {
        status.textContent = "Not signed in: " + v.error;
        return;
      }
    } catch (e) {
      await new Promise((r) => setTimeout(r, 2000));
    }
    wait();
  }
  wait();
})();

(function () {
  const root = document.getElementById("build");
  if (!root) return;
  const id = root.dataset.build;
  const liveURL = root.dataset.live; // /builds/{id}/live, or a share link's /shared/{token}/live
  const shared = !!root.dataset.shared; // a share link's page: no log, no session
  const $ = (sel) => document.getElementById(sel);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  const maxLines = 20000;
  let after = 0; // the last log line shown
  let history = new Map(); // step name → its runs in earlier builds, newest first (the first poll's)
  let afterEnd = 0; // polls since the build ended
  let jumped = false; // the log was scrolled to the failing step once
  const stepNo = new Map(); // digest → its number in the waterfall
  const stepName = new Map(); // digest → a short name for log lines

  function human(ms) {
    if (ms <= 0) return "0s";
    if (ms < 1000) return ms + "ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
  }
  const MARK = { cached: "CACHED", done: "DONE", failed: "FAILED", running: "RUNNING", waiting: "WAITING" };

  function drawWaterfall(b, steps) {
    const list = $("waterfall");
    const t0 = steps.reduce((m, s) => (s.started_at ? Math.min(m, Date.parse(s.started_at)) : m), Infinity);
    const now = Date.now();
    let t1 = t0;
    for (const s of steps) {
      const end = s.completed_at ? Date.parse(s.completed_at) : s.state === "running" ? now : s.started_at ? Date.parse(s.started_at) : t0;
      t1 = Math.max(t1, end);
    }
    const span = Math.max(t1 - t0, 1);
    list.replaceChildren();
    steps.forEach((s, i) => {
      stepNo.set(s.digest, i + 1);
      stepName.set(s.digest, "#" + (i + 1));
      const li = el("li", "step " + s.state);
      li.dataset.digest = s.digest;
      li.dataset.state = s.state;
      const name = el("span", "name");
      name.title = s.name;
      name.append(el("span", "mark", MARK[s.state] || s.state), document.createTextNode(s.name));
      const track = el("span", "track");
      track.setAttribute("aria-hidden", "true");
      const seg = el("span", "seg");
      if (s.started_at && isFinite(t0)) {
        const start = Date.parse(s.started_at);
        const end = s.completed_at ? Date.parse(s.completed_at) : s.state === "running" ? now : start;
        seg.style.left = ((100 * (start - t0)) / span).toFixed(2) + "%";
        seg.style.width = ((100 * Math.max(end - start, 0)) / span).toFixed(2) + "%";
      } else {
        seg.hidden = true;
      }
      track.append(seg);
      let ms = s.duration_ms;
      if (s.state === "running" && s.started_at) ms = now - Date.parse(s.started_at);
      const dur = el("span", "dur");
      const runs = history.get(s.name) || []; // a Map: a step named "constructor" is no inherited key
      if (runs.length) {
        // Earlier runs of this step, oldest left: a bar each, as tall as
        // its run was long against the longest.
        const hist = el("span", "hist");
        const top = Math.max(...runs.map((r) => r.ms), ms, 1);
        hist.title = "earlier builds: " + runs.map((r) => r.build + " " + (r.state === "cached" ? "cached" : human(r.ms) + (r.state === "failed" ? " failed" : ""))).join(", ");
        hist.setAttribute("aria-label", hist.title);
        for (const r of runs.slice().reverse()) {
          const b = el("span", "run " + r.state);
          b.style.height = Math.max(2, Math.round((14 * (r.state === "cached" ? 0 : r.ms)) / top)) + "px";
          hist.append(b);
        }
        dur.append(hist);
      }
      dur.append(document.createTextNode(s.state === "cached" ? "cached" : s.started_at ? human(ms) : ""));
      li.append(name, track, dur);
      if (s.error) li.append(el("div", "err", s.error));
      list.append(li);
    });
  }

  function appendLogs(lines, steps) {
    const log = $("log");
    if (!log) return; // a shared build's page has none
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    const failed = new Set(steps.filter((s) => s.state === "failed").map((s) => s.digest));
    for (const l of lines) {
      const line = el("span", "line" + (failed.has(l.digest) ? " fail" : ""));
      line.dataset.digest = l.digest;
      line.dataset.seq = l.seq;
      line.append(el("span", "tag", (stepName.get(l.digest) || "··") + " "), document.createTextNode(l.message.replace(/\n$/, "")));
      log.append(line);
    }
    // A page keeps the last maxLines lines; `kiln builds logs` has all.
    let extra = log.childElementCount - maxLines;
    if (extra > 0) {
      while (extra-- > 0) log.firstElementChild.remove();
      $("follow").dataset.cut = "1";
    }
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  // jumpToFailure marks the failing step's lines and scrolls the log to
  // its last one (where its error is), once.
  function jumpToFailure(steps) {
    const failed = steps.filter((s) => s.state === "failed");
    if (!failed.length || jumped || !$("log")) return;
    const d = failed[failed.length - 1].digest;
    const lines = $("log").querySelectorAll('.line[data-digest="' + CSS.escape(d) + '"]');
    lines.forEach((l) => l.classList.add("fail"));
    if (lines.length) {
      const last = lines[lines.length - 1];
      $("log").scrollTop = last.offsetTop - $("log").clientHeight / 2;
    }
    jumped = true;
  }

  function drawResources(r, ended) {
    const p = $("resources");
    if (r.samples === 0 && ended) p.textContent = "No samples of the builder were recorded for this build.";
    if (r.samples > 0) {
      let text = "Peak memory " + (r.peak_memory_bytes / 1048576).toFixed(0) + " MiB";
      if (r.memory_limit_bytes > 0) text += " of " + (r.memory_limit_bytes / 1048576).toFixed(0) + " MiB";
      text += ", peak CPU " + r.peak_cpu_cores.toFixed(2) + " cores (" + r.samples + (r.samples === 1 ? " sample" : " samples") + " of the builder).";
      p.textContent = text;
    }
    if (r.memory.length >= 2) {
      const svg = $("chart-memory");
      const top = Math.max(r.memory_limit_bytes, ...r.memory, 1);
      const n = r.memory.length;
      const pts = r.memory.map((m, i) => ((600 * i) / Math.max(n - 1, 1)).toFixed(1) + "," + (60 - (58 * m) / top).toFixed(1)).join(" ");
      const ns = "http://www.w3.org/2000/svg";
      svg.replaceChildren();
      if (r.memory_limit_bytes > 0) {
        const lim = document.createElementNS(ns, "line");
        lim.setAttribute("class", "limit");
        lim.setAttribute("x1", "0"); lim.setAttribute("x2", "600"); lim.setAttribute("y1", "2"); lim.setAttribute("y2", "2");
        svg.append(lim);
      }
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("class", "mem");
      line.setAttribute("points", pts);
      svg.append(line);
      svg.removeAttribute("hidden");
    }
    const oom = $("oom-banner");
    oom.hidden = !r.oom;
    oom.textContent = r.oom ? "Out of memory: " + r.oom : "";
    const near = $("near-banner");
    near.hidden = !r.near_limit || !!r.oom;
    near.textContent = r.near_limit ? "Near the memory limit: " + r.near_limit : "";
  }

  let polls = 0;
  function draw(v) {
    root.dataset.polls = String(++polls); // how many answers the page has drawn
    const b = v.build;
    const st = $("status");
    st.textContent = b.status;
    st.className = "badge " + b.status;
    $("duration").textContent = human(b.duration_ms);
    $("steps-count").textContent = b.cached_steps + " cached of " + b.total_steps;
    const queue = $("queue");
    if (queue) queue.textContent = b.queue_ahead >= 0 ? b.queue_ahead + " builds ahead" : "left the queue";
    if (v.history) history = new Map(Object.entries(v.history));
    drawWaterfall(b, v.steps);
    appendLogs(v.logs, v.steps);
    after = v.next;
    const banner = $("error-banner");
    const failed = v.steps.filter((s) => s.state === "failed");
    if (b.error || failed.length) {
      const f = failed[failed.length - 1];
      banner.textContent = f ? "Failed at " + f.name + ": " + f.error : b.error;
      banner.hidden = false;
    }
    drawResources(v.resources, b.terminal);
    if (b.terminal) jumpToFailure(v.steps);
    const log = $("log");
    if (!log) return;
    const cut = $("follow").dataset.cut ? " (the first lines are cut: kiln builds logs " + id + " prints them all)" : "";
    $("follow").textContent = (b.terminal ? "" : "(following)") + cut;
    if (b.terminal && log.childElementCount === 0) log.textContent = "(no log lines)";
  }

  async function poll() {
    let delay = 1000;
    try {
      const res = await fetch(liveURL + "?after=" + after, {
        credentials: shared ? "omit" : "same-origin", referrerPolicy: "no-referrer", headers: { Accept: "application/json" }, cache: "no-store",
      });
      if (res.status === 401 && !shared) {
        location.assign("/sign-in?ended=1");
        return;
      }
      if (res.status === 429) {
        // Too many polls (another tab of the session, say): wait as told.
        setTimeout(poll, 1000 * (Number(res.headers.get("Retry-After")) || 2));
        return;
      }
      if (!res.ok) throw new Error("HTTP " + res.status);
      const v = await res.json();
      draw(v);
      if (v.more) delay = 0;
      else if (v.build.terminal && ++afterEnd > 8) return; // the follower stores the last steps a moment after the end
    } catch (e) {
      const follow = $("follow"); // a shared page has no log to follow
      if (follow) follow.textContent = "(reconnecting: " + e.message + ")";
      delay = 3000;
    }
    setTimeout(poll, delay);
  }
  poll();
})();
