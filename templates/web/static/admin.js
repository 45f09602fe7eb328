// The console's only script: keeps a delivery-progress list current by polling its JSON.
"use strict";
document.querySelectorAll("[data-progress]").forEach(function (list) {
  function refresh() {
    fetch(list.dataset.progress, { credentials: "same-origin", cache: "no-store" })
      .then(function (reply) { return reply.ok ? reply.json() : null; })
      .then(function (data) {
        if (!data) return;
        list.querySelectorAll("[data-key]").forEach(function (cell) {
          cell.textContent = String(data[cell.dataset.key]);
        });
        if (data.status === "sending" || data.status === "scheduled") setTimeout(refresh, 3000);
      })
      .catch(function () { setTimeout(refresh, 10000); });
  }
  setTimeout(refresh, 3000);
});
