// hexcast console: the only script (served as a file; the CSP forbids inline code).
// 1. A section with data-poll="URL" is refreshed from URL every data-every ms; its HTML is
//    replaced only when the server's X-Console-Version differs and nobody is typing in it.
// 2. Elements with data-deadline / data-since (Unix ms) count down / up every second.
// 3. A range input with data-autosubmit shows its value and submits its form on change.
(function () {
  "use strict";
  function fmt(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  }
  function clocks() {
    var now = Date.now();
    document.querySelectorAll("[data-deadline]").forEach(function (el) {
      el.textContent = fmt(Number(el.getAttribute("data-deadline")) - now);
    });
    document.querySelectorAll("[data-since]").forEach(function (el) {
      el.textContent = fmt(now - Number(el.getAttribute("data-since")));
    });
  }
  function typing(section) {
    var a = document.activeElement;
    return a && section.contains(a) && a.tagName === "INPUT" && a.value !== "";
  }
  function poll(section) {
    var url = section.getAttribute("data-poll");
    var every = Number(section.getAttribute("data-every")) || 2000;
    function tick() {
      fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) {
          if (r.status === 401) { window.location.assign("/login"); return null; }
          if (!r.ok) return null;
          var version = r.headers.get("X-Console-Version");
          if (version === section.getAttribute("data-version") || typing(section)) return null;
          return r.text().then(function (html) {
            section.innerHTML = html;
            section.setAttribute("data-version", version || "");
            clocks();
          });
        })
        .catch(function () {})
        .then(function () { window.setTimeout(tick, every); });
    }
    window.setTimeout(tick, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll]").forEach(poll);
    document.querySelectorAll("input[data-autosubmit]").forEach(function (input) {
      var out = input.form && input.form.querySelector("output");
      input.addEventListener("input", function () { if (out) out.textContent = input.value; });
      input.addEventListener("change", function () { if (input.form) input.form.submit(); });
    });
    clocks();
    window.setInterval(clocks, 1000);
  });
})();
