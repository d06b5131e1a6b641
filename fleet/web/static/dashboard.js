// The dashboard's only script: refresh a page's live part in place, and sort tables.
// No libraries: sites and ops offices may be offline, and nothing is fetched from elsewhere.
"use strict";

(function () {
  var sortState = {}; // table index -> {column, direction}, kept across refreshes

  function cellValue(row, column, kind) {
    var cell = row.cells[column];
    if (!cell) return "";
    var raw = cell.hasAttribute("data-value") ? cell.getAttribute("data-value") : cell.textContent;
    if (kind === "num") {
      var n = parseFloat(raw);
      return isNaN(n) ? -Infinity : n;
    }
    return raw.trim().toLowerCase();
  }

  function sortTable(table, column, direction) {
    var header = table.tHead.rows[0].cells[column];
    var kind = header.getAttribute("data-sort");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, column, kind), y = cellValue(b, column, kind);
      return (x < y ? -1 : x > y ? 1 : 0) * direction;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.removeAttribute("aria-sort");
    });
    header.setAttribute("aria-sort", direction > 0 ? "ascending" : "descending");
  }

  function wireSorting(root) {
    var tables = root.querySelectorAll("table.sortable");
    Array.prototype.forEach.call(tables, function (table, index) {
      var state = sortState[index];
      if (state) sortTable(table, state.column, state.direction);
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
        if (!th.hasAttribute("data-sort")) return;
        th.tabIndex = 0;
        var activate = function () {
          var current = sortState[index];
          var direction = current && current.column === column ? -current.direction : 1;
          sortState[index] = { column: column, direction: direction };
          sortTable(table, column, direction);
        };
        th.addEventListener("click", activate);
        th.addEventListener("keydown", function (e) { if (e.key === "Enter") activate(); });
      });
    });
  }

  // The words come from the page (its catalogs, in a data- attribute), never from here:
  // "%(time)s" and the like are filled in as the server's gettext would.
  function fill(pattern, values) {
    return (pattern || "").replace(/%\((\w+)\)s/g, function (whole, name) {
      return Object.prototype.hasOwnProperty.call(values, name) ? values[name] : whole;
    });
  }

  // Now, as the page's language writes a time, in the page's zone (the user's choice or the
  // site's; else the browser's own), the zone named; on 24 hours, as the server's HH:mm.
  function clockTime(stamp) {
    var options = { hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZoneName: "short" };
    var zone = stamp.getAttribute("data-zone");
    if (zone) options.timeZone = zone;
    var lang = document.documentElement.lang || undefined;
    try {
      return new Intl.DateTimeFormat(lang, options).format(new Date());
    } catch (e) { // a zone this browser does not know: its own
      delete options.timeZone;
      return new Intl.DateTimeFormat(lang, options).format(new Date());
    }
  }

  function startRefresh(live) {
    var url = live.getAttribute("data-refresh");
    var every = (parseInt(live.getAttribute("data-every"), 10) || 15) * 1000;
    var stamp = document.getElementById("refreshed");
    function tick() {
      if (document.hidden) return; // no traffic on a metered link for a tab nobody looks at
      fetch(url, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
        .then(function (resp) {
          if (!resp.ok) throw new Error("HTTP " + resp.status);
          return resp.text();
        })
        .then(function (html) {
          live.innerHTML = html;
          wireSorting(live);
          live.dispatchEvent(new CustomEvent("refreshed"));
          if (stamp) {
            stamp.className = "refreshed";
            stamp.textContent = fill(stamp.getAttribute("data-updated"), { time: clockTime(stamp) });
          }
        })
        .catch(function (err) {
          if (stamp) {
            stamp.className = "refreshed refresh-failed";
            stamp.textContent = fill(stamp.getAttribute("data-failed"), { error: err.message });
          }
        });
    }
    window.setInterval(tick, every);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) tick(); });
    live.refreshNow = tick; // for tests and a future "refresh" button
  }

  // The zone choice offers the browser's own zone: "read times in my time".
  function offerOwnZone(doc) {
    var select = doc.querySelector("select[name=tz]");
    var own = window.Intl && Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (!select || !own) return;
    for (var i = 0; i < select.options.length; i++) if (select.options[i].value === own) return;
    var option = doc.createElement("option");
    option.value = own;
    option.textContent = own;
    select.appendChild(option);
  }

  document.addEventListener("DOMContentLoaded", function () {
    wireSorting(document);
    offerOwnZone(document);
    var live = document.getElementById("live");
    if (live && live.hasAttribute("data-refresh")) startRefresh(live);
  });
})();
