// Ledger filters and matrix-cell selection. No network access, no libraries.
(function () {
  "use strict";
  var ledger = document.getElementById("ledger");
  var text = document.getElementById("filter-text");
  var state = document.getElementById("filter-state");
  var route = document.getElementById("filter-route");
  var kind = document.getElementById("filter-kind");
  var clear = document.getElementById("filter-clear");
  var count = document.getElementById("ledger-count");
  var selectedCell = null;

  function applyFilters() {
    if (!ledger) {
      return;
    }
    var rows = ledger.tBodies[0].rows;
    var query = text.value.trim().toLowerCase();
    var visibleCount = 0;
    for (var i = 0; i < rows.length; i++) {
      var row = rows[i];
      var visible =
        (!state.value || row.dataset.state === state.value) &&
        (!route.value || row.dataset.route === route.value) &&
        (!kind.value || row.dataset.kind === kind.value) &&
        (!selectedCell ||
          (row.dataset.route === selectedCell.dataset.route &&
            row.dataset.sopClass === selectedCell.dataset.sopClass &&
            row.dataset.transferSyntax === selectedCell.dataset.transferSyntax)) &&
        (!query || row.textContent.toLowerCase().indexOf(query) !== -1);
      row.hidden = !visible;
      if (visible) {
        visibleCount++;
      }
    }
    var suffix = selectedCell ? " (matrix cell selected; click it again or clear)" : "";
    count.textContent = visibleCount + " of " + rows.length + " rows shown" + suffix;
  }

  function selectCell(cell) {
    if (selectedCell) {
      selectedCell.classList.remove("selected");
    }
    selectedCell = selectedCell === cell ? null : cell;
    if (selectedCell) {
      selectedCell.classList.add("selected");
      if (ledger) {
        ledger.scrollIntoView({ behavior: "smooth", block: "start" });
      }
    }
    applyFilters();
  }

  // A link such as report.html#state=failed&route=ct%20-%3E%20viewer opens the ledger filtered.
  // Hashes without "=" are the section anchors and leave the filters alone.
  function applyHash() {
    var hash = window.location.hash.slice(1);
    if (!ledger || hash.indexOf("=") === -1) {
      return;
    }
    var params = new URLSearchParams(hash);
    text.value = params.get("q") || "";
    state.value = params.get("state") || "";
    route.value = params.get("route") || "";
    kind.value = params.get("kind") || "";
    applyFilters();
  }

  if (ledger) {
    [text, state, route, kind].forEach(function (control) {
      control.addEventListener("input", applyFilters);
    });
    clear.addEventListener("click", function () {
      text.value = "";
      state.value = "";
      route.value = "";
      kind.value = "";
      if (selectedCell) {
        selectCell(selectedCell);
      }
      applyFilters();
    });
    var cells = document.querySelectorAll("#matrix td.cell:not(.empty)");
    for (var i = 0; i < cells.length; i++) {
      cells[i].addEventListener("click", function (event) {
        selectCell(event.currentTarget);
      });
    }
    window.addEventListener("hashchange", applyHash);
    applyFilters();
    applyHash();
  }
  document.documentElement.setAttribute("data-report-ready", "1");
})();
