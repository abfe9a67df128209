// mfa-reset console: upload → preview → submit, and live batch progress (server-sent events).
// Values are always set with textContent, never as HTML.
"use strict";
(function () {
  function el(tag, text) { const e = document.createElement(tag); if (text !== undefined) e.textContent = String(text); return e; }
  const form = document.getElementById("upload");
  if (form) {
    const csrf = form.dataset.csrf;
    const out = document.getElementById("preview");
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const file = document.getElementById("file").files[0];
      if (!file) return;
      out.replaceChildren(el("p", "Checking " + file.name + " …"));
      const q = new URLSearchParams({ name: file.name,
        dry_run: document.getElementById("dry_run").checked,
        revoke_sessions: document.getElementById("revoke_sessions").checked });
      const r = await fetch("/api/v1/uploads?" + q, { method: "POST", body: file,
        headers: { "content-type": "text/csv", "x-csrf-token": csrf } });
      const p = await r.json();
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
      out.append(el("p", p.count + " users" + (p.dry_run ? " (dry run)" : "") + (p.revoke_sessions ? ", sessions revoked" : "") + "; checked in " + p.validated_in_ms + " ms"));
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
  if (batch) {
    const es = new EventSource("/api/v1/batches/" + encodeURIComponent(batch.textContent) + "/events");
    es.addEventListener("counts", function (ev) {
      const c = JSON.parse(ev.data);
      document.getElementById("progress").max = c.expected;
      document.getElementById("progress").value = c.finished;
      document.getElementById("finished").textContent = c.finished;
      document.getElementById("counts").textContent = JSON.stringify(c.counts, null, 1);
      if (c.complete) es.close();
    });
  }
})();
