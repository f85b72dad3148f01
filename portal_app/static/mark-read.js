/* Opening a message marks it read, but never through the GET of the page (a GET must not
   write: prefetching, link scanners and reloads would "read" messages). The page carries a
   "Mark as read" form only while the message is addressed to the user and unread; this
   script posts that form in the background once the page has opened, with the form's CSRF
   token, and asks for JSON so that nothing is flashed or redirected. Without script the
   button does the same with a full page load. An external file: the CSP allows no inline
   script. */
(function () {
  "use strict";
  var form = document.getElementById("mark-read");
  if (!form || !window.fetch || !window.URLSearchParams || !window.FormData) { return; }

  function marked() {
    var unread = document.getElementById("mark-unread");
    var status = document.getElementById("read-status");
    form.hidden = true;
    form.setAttribute("data-read", "true");
    if (unread) { unread.hidden = false; }
    if (status) { status.textContent = "Marked as read."; }
    // The console's Alerts badge asks for the new count now rather than at its next tick.
    document.dispatchEvent(new CustomEvent("portal:read-state-changed"));
  }

  fetch(form.action, {
    method: "POST",
    credentials: "same-origin",
    cache: "no-store",
    redirect: "manual",  // a lost sign-in answers with a redirect: leave the button for the user
    keepalive: true,     // finish even when the user leaves the page at once
    headers: { "Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams(new FormData(form)).toString()
  })
    .then(function (resp) { if (resp.ok) { marked(); } })
    .catch(function () { /* offline: the button still works */ });
})();
