/* The Print button of the portal-access sheet (external: the CSP allows no inline script). */
(function () {
  "use strict";
  var button = document.getElementById("print-sheet");
  if (button) { button.addEventListener("click", function () { window.print(); }); }
})();
