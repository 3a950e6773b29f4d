// Postback Settings: live preview + inline macro errors, test button, small helpers.
// Plain JavaScript, no dependencies; the page works without it (server-side checks).
(function () {
  "use strict";
  var form = document.getElementById("settings-form");
  if (!form) return;
  var csrf = form.dataset.csrf;
  var template = document.getElementById("url_template");
  var token = document.getElementById("security_token");
  var errorBox = document.getElementById("template-error");
  var preview = document.getElementById("preview");
  var previewUrl = document.getElementById("preview-url");
  var warnings = document.getElementById("preview-warnings");
  var timer = null;
  var sequence = 0;

  function showError(message) {
    if (message) {
      errorBox.textContent = message;
      errorBox.hidden = false;
      template.setAttribute("aria-invalid", "true");
    } else {
      errorBox.textContent = "";
      errorBox.hidden = true;
      template.removeAttribute("aria-invalid");
    }
  }

  function render(result) {
    warnings.textContent = "";
    if (!template.value.trim()) {
      showError("");
      previewUrl.textContent = "—";
      preview.classList.add("is-invalid");
      return;
    }
    if (result.valid) {
      showError("");
      previewUrl.textContent = result.url;
      preview.classList.remove("is-invalid");
      (result.warnings || []).forEach(function (w) {
        var li = document.createElement("li");
        li.textContent = w;
        warnings.appendChild(li);
      });
    } else {
      var message = result.error;
      if (result.unknown_macros && result.unknown_macros.length) {
        message = "Unknown macro" + (result.unknown_macros.length > 1 ? "s " : " ") +
          result.unknown_macros.map(function (m) { return "{" + m + "}"; }).join(", ") +
          " — check the spelling against the macro list.";
      }
      showError(message);
      previewUrl.textContent = "—";
      preview.classList.add("is-invalid");
    }
  }

  function refresh() {
    var mine = ++sequence;
    fetch(form.dataset.previewUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ url_template: template.value, security_token: token.value || null })
    }).then(function (r) { return r.ok ? r.json() : null; })
      .then(function (result) { if (result && mine === sequence) render(result); })
      .catch(function () { /* offline: the server still checks on save */ });
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 180);
  }
  template.addEventListener("input", schedule);
  token.addEventListener("input", schedule);

  function insertAtCursor(text) {
    var start = template.selectionStart, end = template.selectionEnd;
    var value = template.value;
    template.value = value.slice(0, start) + text + value.slice(end);
    template.focus();
    template.selectionStart = template.selectionEnd = start + text.length;
    schedule();
  }
  document.querySelectorAll("[data-insert]").forEach(function (b) {
    b.addEventListener("click", function () { insertAtCursor(b.dataset.insert); });
  });
  document.querySelectorAll("[data-use-template]").forEach(function (b) {
    b.addEventListener("click", function () {
      template.value = b.dataset.useTemplate;
      template.focus();
      template.scrollIntoView({ block: "center" });
      schedule();
    });
  });
  var generate = document.getElementById("generate-token");
  if (generate && window.crypto) {
    generate.addEventListener("click", function () {
      var bytes = new Uint8Array(18);
      window.crypto.getRandomValues(bytes);
      token.value = "tok_" + Array.prototype.map.call(bytes, function (b) {
        return ("0" + b.toString(16)).slice(-2);
      }).join("");
      token.focus();
      schedule();
    });
  }

  // Send test postback: show the outcome in place, then refresh Recent deliveries.
  var testForm = document.getElementById("test-form");
  var outcome = document.getElementById("test-outcome");
  var testButton = document.getElementById("test-button");
  var deliveries = document.getElementById("deliveries-body");

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function latency(ms) { return ms >= 10 ? Math.round(ms) + " ms" : ms.toFixed(1) + " ms"; }

  function showOutcome(result) {
    outcome.textContent = "";
    var box = el("div", "outcome " + (result.ok ? "outcome-ok" : "outcome-fail"));
    box.id = "test-result";
    var title = el("p", "outcome-title");
    title.appendChild(el("strong", "", result.ok ? "Delivered" : "Failed"));
    title.appendChild(document.createTextNode(" — "));
    var status = el("span", "", result.status ? "HTTP " + result.status : "no response");
    status.id = "test-status";
    title.appendChild(status);
    title.appendChild(document.createTextNode(" in " + latency(result.latency_ms)));
    box.appendChild(title);
    var url = el("p", "small");
    url.appendChild(el("span", "muted", "URL "));
    url.appendChild(el("code", "", result.url));
    box.appendChild(url);
    if (result.error_class) {
      box.appendChild(el("p", "small error-text",
        result.error_class + (result.error_message ? ": " + result.error_message : "")));
    }
    if (result.response_excerpt) box.appendChild(el("pre", "excerpt", result.response_excerpt));
    outcome.appendChild(box);
  }

  if (testForm) {
    testForm.addEventListener("submit", function (event) {
      event.preventDefault();
      testButton.disabled = true;
      testButton.textContent = "Sending…";
      outcome.textContent = "";
      fetch(testForm.action, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": testForm.dataset.csrf },
        body: "{}"
      }).then(function (r) {
        return r.json().then(function (body) { return { ok: r.ok, body: body }; });
      }).then(function (answer) {
        if (answer.ok) showOutcome(answer.body);
        else {
          var box = el("div", "outcome outcome-fail");
          box.id = "test-result";
          box.appendChild(el("p", "", answer.body.detail || "The test could not be sent."));
          outcome.appendChild(box);
        }
        return fetch(deliveries.dataset.url, { credentials: "same-origin" });
      }).then(function (r) { return r && r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) deliveries.innerHTML = html; })
        .catch(function () {
          outcome.textContent = "";
          outcome.appendChild(el("p", "outcome outcome-fail", "Network error: the test was not sent."));
        })
        .finally(function () {
          testButton.disabled = false;
          testButton.textContent = "Send test postback";
        });
    });
  }
})();
