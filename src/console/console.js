// mfa-reset console: upload → preview → submit, and live batch progress (server-sent events).
// Values are always set with textContent, never as HTML.
"use strict";
(function () {
  function el(tag, text) { const e = document.createElement(tag); if (text !== undefined) e.textContent = String(text); return e; }
  function megabytes(n) { return (n / 1048576).toFixed(1) + " MB"; }
  // POST with upload progress (fetch reports none): resolves to {ok, status, json}.
  function postWithProgress(url, body, headers, onProgress, onSent) {
    return new Promise(function (resolve, reject) {
      const x = new XMLHttpRequest();
      x.open("POST", url);
      for (const k of Object.keys(headers)) x.setRequestHeader(k, headers[k]);
      x.responseType = "json";
      x.upload.onprogress = function (e) { if (e.lengthComputable) onProgress(e.loaded, e.total); };
      x.upload.onload = onSent;
      x.onload = function () { resolve({ ok: x.status >= 200 && x.status < 300, status: x.status, json: x.response || { error: "HTTP " + x.status } }); };
      x.onerror = function () { reject(new Error("the console did not answer")); };
      x.send(body);
    });
  }
  const form = document.getElementById("upload");
  if (form) {
    const csrf = form.dataset.csrf;
    const out = document.getElementById("preview");
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const file = document.getElementById("file").files[0];
      if (!file) return;
      // Refused before sending: a server that stops reading a body too large can only reset
      // the connection, which the browser reports as no answer at all.
      const max = Number(form.dataset.maxUpload);
      if (max > 0 && file.size > max) {
        out.replaceChildren(el("p", "the file is larger than console.max_upload (" + max + " bytes): split it into several batches"));
        return;
      }
      // Progress while it runs: the upload's bytes, then the check on the server.
      const status = el("p", "Uploading " + file.name + " (" + megabytes(file.size) + ") …");
      status.id = "upload-status";
      const bar = el("progress"); bar.id = "upload-progress"; bar.max = file.size; bar.value = 0;
      out.replaceChildren(status, bar);
      const q = new URLSearchParams({ name: file.name,
        dry_run: document.getElementById("dry_run").checked,
        revoke_sessions: document.getElementById("revoke_sessions").checked,
        tap: document.getElementById("tap").checked });
      let r;
      try {
        r = await postWithProgress("/api/v1/uploads?" + q, file,
          { "content-type": "text/csv", "x-csrf-token": csrf },
          function (sent, total) { bar.max = total; bar.value = sent; status.textContent = "Uploading " + file.name + ": " + Math.floor(100 * sent / total) + " % of " + megabytes(total); },
          function () { bar.removeAttribute("value"); status.textContent = "Checking " + file.name + " (" + megabytes(file.size) + ") …"; });
      } catch (e) {
        out.replaceChildren(el("p", e.message));
        return;
      }
      const p = r.json;
      out.replaceChildren();
      if (!r.ok) {
        out.append(el("p", p.message || p.error));
        if (p.errors) {
          const t = el("table"); t.append(el("tr")); t.firstChild.append(el("th", "line"), el("th", "field"), el("th", "value"), el("th", "why"));
          for (const e of p.errors) { const tr = el("tr"); tr.append(el("td", e.line), el("td", e.field), el("td", e.value), el("td", e.reason)); t.append(tr); }
          out.append(t);
        }
        return;
      }
      out.append(el("p", p.count + " users" + (p.dry_run ? " (dry run)" : "") + (p.revoke_sessions ? ", sessions revoked" : "") + (p.tap ? ", a Temporary Access Pass each" : "") + "; checked in " + p.validated_in_ms + " ms"));
      out.append(el("p", "Sample: " + p.sample.join(", ")));
      if (p.duplicates_total) out.append(el("p", p.duplicates_total + " duplicate rows, each user once"));
      if (p.protected_total) out.append(el("p", p.protected_total + " protected users will be skipped: " + p.protected.join(", ")));
      if (p.needs_approval) out.append(el("p", "This batch waits for a second person's approval."));
      const b = el("button", "Submit " + p.count + " users");
      b.addEventListener("click", async function () {
        b.disabled = true;
        const s = await fetch("/api/v1/uploads/" + encodeURIComponent(p.upload) + "/submit", { method: "POST", headers: { "x-csrf-token": csrf } });
        const a = await s.json();
        if (s.ok) { window.location = "/batches/" + encodeURIComponent(a.batch); } else { out.append(el("p", a.message || a.error)); }
      });
      out.append(b);
    });
  }
  const batch = document.getElementById("batch");
  const approve = document.getElementById("approve");
  if (batch && approve) {
    approve.addEventListener("click", async function () {
      approve.disabled = true;
      const r = await fetch("/api/v1/batches/" + encodeURIComponent(batch.textContent) + "/approve", { method: "POST", headers: { "x-csrf-token": approve.dataset.csrf } });
      const a = await r.json();
      document.getElementById("approved").textContent = r.ok ? ("approved by " + a.approved_by) : (a.message || a.error);
    });
  }
  function duration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function row(cells) { const tr = el("tr"); for (const c of cells) tr.append(el("td", c === null || c === undefined ? "" : c)); return tr; }
  if (batch) {
    const base = "/api/v1/batches/" + encodeURIComponent(batch.textContent);
    // The per-user table: fetched a page at a time on request, never pushed by the stream.
    const users = document.getElementById("users");
    let offset = 0;
    const limit = 50;
    async function loadUsers() {
      if (!users) return;
      const q = new URLSearchParams({ status: document.getElementById("status-filter").value,
        q: document.getElementById("search").value, offset: offset, limit: limit });
      const r = await fetch(base + "/users?" + q);
      const p = await r.json();
      const body = users.tBodies[0];
      if (!r.ok) { body.replaceChildren(row([p.message || p.error])); return; }
      body.replaceChildren(...p.rows.map(function (u) {
        return row([u.user, u.status, u.why, u.methods_removed, u.methods_remaining, u.sessions_revoked ? "yes" : "no", u.attempts, u.ticket, u.finished_at]);
      }));
      document.getElementById("page").textContent = (p.total ? (p.offset + 1) + "–" + (p.offset + p.rows.length) : "0") + " of " + p.total + (p.pending ? " (" + p.pending + " still pending)" : "");
      document.getElementById("prev").disabled = p.offset === 0;
      document.getElementById("next").disabled = p.offset + p.rows.length >= p.total;
    }
    if (users) {
      document.getElementById("users-filter").addEventListener("submit", function (ev) { ev.preventDefault(); offset = 0; loadUsers(); });
      document.getElementById("prev").addEventListener("click", function () { offset = Math.max(0, offset - limit); loadUsers(); });
      document.getElementById("next").addEventListener("click", function () { offset += limit; loadUsers(); });
      loadUsers();
    }
    function show(c) {
      document.getElementById("progress").max = c.expected;
      document.getElementById("progress").value = c.finished;
      document.getElementById("finished").textContent = c.finished;
      document.getElementById("counts").textContent = JSON.stringify(c.counts, null, 1);
      const p = c.progress;
      if (!p) return;
      const rate = document.getElementById("rate");
      if (rate) rate.textContent = p.rate;
      const eta = document.getElementById("eta");
      if (eta) eta.textContent = c.complete ? "done" : duration(p.eta_seconds);
      const counts = document.getElementById("status-counts");
      if (counts) counts.tBodies[0].replaceChildren(...Object.keys(c.counts).map(function (k) { return row([k, c.counts[k]]); }), row(["pending", c.pending]));
      const line = document.getElementById("chart-line");
      if (line && p.timeline.length) {
        const tmax = Math.max(p.timeline[p.timeline.length - 1][0], 1);
        const ymax = Math.max(c.expected, 1);
        line.setAttribute("points", p.timeline.map(function (pt) {
          return (pt[0] / tmax * 600).toFixed(1) + "," + (150 - pt[1] / ymax * 150).toFixed(1);
        }).join(" "));
      }
      const why = document.getElementById("why");
      if (why) {
        const rows = p.not_reset.map(function (g) { return row([g.status, g.why, g.count, g.example]); });
        if (p.not_reset_other) rows.push(row(["other", "", p.not_reset_other, ""]));
        why.tBodies[0].replaceChildren(...rows);
      }
    }
    const es = new EventSource(base + "/events");
    es.addEventListener("counts", function (ev) {
      const c = JSON.parse(ev.data);
      show(c);
      if (c.complete) { es.close(); loadUsers(); }
    });
  }
  // Dead letters: an operator asks for a replay, a different approver approves it.
  const replayStatus = document.getElementById("replay-status");
  for (const b of document.querySelectorAll("button.replay-ask")) {
    b.addEventListener("click", async function () {
      b.disabled = true;
      const r = await fetch("/api/v1/replays", { method: "POST",
        headers: { "content-type": "application/json", "x-csrf-token": b.dataset.csrf },
        body: JSON.stringify({ batch: b.dataset.batch, error_code: b.dataset.code }) });
      const a = await r.json();
      replayStatus.textContent = r.ok ? ("Replay asked for; another approver must approve it.") : (a.message || a.error);
      if (r.ok) window.location.reload();
    });
  }
  for (const b of document.querySelectorAll("button.replay-approve")) {
    b.addEventListener("click", async function () {
      b.disabled = true;
      const r = await fetch("/api/v1/replays/" + encodeURIComponent(b.dataset.id) + "/approve", { method: "POST",
        headers: { "x-csrf-token": b.dataset.csrf } });
      const a = await r.json();
      replayStatus.textContent = r.ok ? ("Replayed " + a.replayed + " request(s).") : (a.message || a.error);
    });
  }
})();
