/* The provider console's Alerts badge: asks the portal for the unread WebMail count every 5 s.
   An external file (no inline script, the CSP forbids it); the count comes from a same-origin
   JSON endpoint that carries no PHI. When the session has ended the polling stops. It also
   asks at once when mark-read.js reports that this page marked a message read. */
(function () {
  "use strict";
  var link = document.getElementById("alerts");
  var badge = document.getElementById("alerts-count");
  if (!link || !badge || !window.fetch) { return; }
  var url = link.getAttribute("data-alerts-url");
  var timer = null;

  function show(count) {
    var text = String(count);
    if (badge.textContent !== text) { badge.textContent = text; }
    if (count > 0) { link.classList.add("alerts-active"); } else { link.classList.remove("alerts-active"); }
  }

  function poll() {
    fetch(url, { credentials: "same-origin", cache: "no-store", headers: { "Accept": "application/json" } })
      .then(function (resp) {
        if (resp.status === 401) { window.clearInterval(timer); badge.textContent = "–"; return null; }
        return resp.ok ? resp.json() : null;
      })
      .then(function (data) {
        if (data && typeof data.count === "number") { show(data.count); }
      })
      .catch(function () { /* a network blip: try again at the next tick */ });
  }

  timer = window.setInterval(poll, 5000);
  // mark-read.js changed the read state on this page: show the new count at once.
  document.addEventListener("portal:read-state-changed", poll);
})();
