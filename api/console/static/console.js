/* bulksms console: live regions and the text counter. No framework, nothing inline (the
   page CSP allows scripts from this origin only). */
"use strict";

(function () {
  var POLL_MS = 3000;

  /* Port of shared/encoding.py (measure): GSM 03.38 basic set and extension table
     (extension characters count double); anything else makes the whole text UCS-2, counted
     in UTF-16 code units (an emoji is two). 160/153 per part for GSM, 70/67 for UCS-2. */
  var GSM_BASIC = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?" +
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
  var GSM_EXTENSION = "^{}\\[~]|€\f";

  function measure(text) {
    var gsm = true, extension = 0;
    for (var ch of text) {  // by code point, as Python iterates a str
      if (GSM_EXTENSION.indexOf(ch) >= 0) {
        extension += 1;
      } else if (GSM_BASIC.indexOf(ch) < 0) {
        gsm = false;
        break;
      }
    }
    var length, single, part, encoding;
    if (gsm) {
      length = Array.from(text).length + extension;
      single = 160; part = 153; encoding = "GSM";
    } else {
      length = text.length;  // UTF-16 code units
      single = 70; part = 67; encoding = "UCS-2";
    }
    var segments = length <= single ? 1 : Math.ceil(length / part);
    return { encoding: encoding, length: length, segments: segments };
  }
  window.bulksmsMeasure = measure;

  function nonGsm(text) {
    var found = [];
    for (var ch of text) {
      if (GSM_BASIC.indexOf(ch) < 0 && GSM_EXTENSION.indexOf(ch) < 0 && found.indexOf(ch) < 0) {
        found.push(ch);
      }
    }
    return found;
  }

  function meter(textarea) {
    var output = document.getElementById(textarea.getAttribute("aria-describedby"));
    var append = document.getElementById("append_opt_out_text");
    var suffix = textarea.getAttribute("data-opt-out-text") || "";
    function update() {
      var text = textarea.value;
      if (append && append.checked && suffix) { text += " " + suffix; }
      var cost = measure(text);
      var name = cost.encoding === "GSM" ? "GSM-7" : "UCS-2";
      var line = cost.length + " characters · " + name + " · " + cost.segments +
        (cost.segments === 1 ? " segment" : " segments");
      var culprits = nonGsm(text);
      if (culprits.length) { line += " (UCS-2 because of " + culprits.slice(0, 5).join(" ") + ")"; }
      var max = cost.encoding === "GSM" ? 1600 : 737;
      if (cost.length > max) { line += " — over the " + name + " maximum of " + max; }
      output.value = line;
      output.textContent = line;
    }
    textarea.addEventListener("input", update);
    if (append) { append.addEventListener("change", update); }
    update();
  }

  function live(region) {
    var url = region.getAttribute("data-live");
    var stopped = false;
    function refresh() {
      if (stopped || document.visibilityState === "hidden") { return; }
      // A keyboard user inside the region keeps their place until they leave it.
      if (region.contains(document.activeElement)) { return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.status === 401) {
            stopped = true;
            region.insertAdjacentHTML("afterbegin",
              "<p class=\"error\" role=\"alert\">Signed out: reload the page to sign in.</p>");
            return null;
          }
          return response.ok ? response.text() : null;
        })
        .then(function (html) {
          if (html !== null && html !== undefined) { region.innerHTML = html; }
        })
        .catch(function () { /* the next tick tries again */ });
    }
    window.setInterval(refresh, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-measure]").forEach(meter);
    document.querySelectorAll("[data-live]").forEach(live);
  });
})();
