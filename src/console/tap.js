// The "show the pass once" button of /batches/{batch}/tap/{request_id}.
"use strict";
(function () {
  const button = document.getElementById("show-tap");
  if (!button) return;
  button.addEventListener("click", async () => {
    button.disabled = true;
    const status = document.getElementById("tap-status");
    const response = await fetch(button.dataset.url, {
      method: "POST",
      headers: { "x-csrf-token": button.dataset.csrf },
      credentials: "same-origin",
    });
    const body = await response.json();
    if (response.ok) {
      // textContent: the pass is shown as text, never parsed as markup.
      document.getElementById("tap-pass").textContent = body.temporary_access_pass;
      status.textContent = "Shown once. It will not be shown again.";
    } else {
      status.textContent = body.message || "refused";
    }
  });
})();
