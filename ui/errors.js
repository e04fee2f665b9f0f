// Loaded first, as a classic script: catches every uncaught error and
// unhandled rejection of the page (and Content-Security-Policy violations),
// keeps them in window.streamcarErrors (bounded) and shows the newest in a
// banner, so an operator sees that the page itself broke rather than a
// silently stale view. The browser test reads the same list.
"use strict";
(function () {
  var MAX = 50;
  var errors = [];
  window.streamcarErrors = errors;
  function record(text) {
    if (errors.length >= MAX) errors.shift();
    errors.push(String(text));
    var banner = document.getElementById("page-errors");
    if (banner) {
      banner.textContent = "This page hit an error: " + text + " (reload to recover; the API is unaffected).";
      banner.hidden = false;
    }
  }
  window.addEventListener("error", function (e) {
    record(e.message || (e.target && e.target.src) || "resource failed to load");
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    var r = e.reason;
    record(r && r.stack ? r.stack : String(r));
  });
  document.addEventListener("securitypolicyviolation", function (e) {
    record("blocked by Content-Security-Policy: " + e.violatedDirective + " " + (e.blockedURI || ""));
  });
  var consoleError = console.error.bind(console);
  console.error = function () {
    record(Array.prototype.map.call(arguments, String).join(" "));
    consoleError.apply(null, arguments);
  };
})();
