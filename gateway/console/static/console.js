// The console's only script: live updates over server-sent events. Agent-controlled text from the audit
// stream is inserted with textContent; the sessions table body comes rendered (and escaped) by the server.
"use strict";
(function () {
  function status(text) {
    var el = document.getElementById("live-status");
    if (el) { el.textContent = text; el.dataset.state = text; }
  }
  function signedOut(source) {
    source.close();
    status("signed out");
    window.location.reload();
  }
  var rows = document.getElementById("session-rows");
  if (rows && rows.dataset.live && window.EventSource) {
    var sessions = new EventSource(rows.dataset.live);
    sessions.addEventListener("open", function () { status("live"); });
    sessions.addEventListener("error", function () { status("reconnecting"); });
    sessions.addEventListener("rows", function (e) {
      rows.innerHTML = e.data;
      rows.dataset.updates = String(Number(rows.dataset.updates || "0") + 1);
      status("live");
    });
    sessions.addEventListener("signedout", function () { signedOut(sessions); });
  }
  var tail = document.getElementById("audit-tail");
  if (tail && tail.dataset.live && window.EventSource) {
    var audit = new EventSource(tail.dataset.live);
    audit.addEventListener("error", function () { status("reconnecting"); });
    audit.addEventListener("ready", function () { status("live"); });
    audit.addEventListener("record", function (e) {
      var record = JSON.parse(e.data);
      var li = document.createElement("li");
      li.textContent = record.line;
      li.dataset.event = record.event;
      if (record.seq !== null && record.seq !== undefined) { li.dataset.seq = String(record.seq); }
      tail.appendChild(li);
      while (tail.children.length > 1000) { tail.removeChild(tail.firstChild); }
    });
    audit.addEventListener("signedout", function () { signedOut(audit); });
  }
})();
