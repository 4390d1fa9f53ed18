/* Renders each plotly figure from its JSON block once it is visible (not inside a closed <details>),
   one at a time so the page stays responsive; window.persampleReport counts what rendered. */
(function () {
  "use strict";
  var state = { rendered: 0, failed: [], pending: 0 };
  var queue = [];
  var busy = false;
  window.persampleReport = state;

  function pump() {
    if (busy || queue.length === 0) { return; }
    busy = true;
    var holder = queue.shift();
    new Promise(function (resolve) {
      resolve(JSON.parse(document.getElementById(holder.dataset.figure).textContent));
    }).then(function (spec) {
      return Plotly.newPlot(holder, spec.data, spec.layout, { responsive: true, displaylogo: false });
    }).then(function () { holder.dataset.rendered = "done"; state.rendered += 1; })
      .catch(function (error) { holder.dataset.rendered = "failed"; state.failed.push(holder.dataset.figure); console.error(error); })
      .finally(function () { state.pending -= 1; busy = false; window.setTimeout(pump, 0); });
  }

  function renderVisible(root) {
    Array.prototype.forEach.call(root.querySelectorAll(".figure[data-figure]"), function (holder) {
      if (holder.dataset.rendered || holder.closest("details:not([open])")) { return; }
      holder.dataset.rendered = "queued";
      state.pending += 1;
      queue.push(holder);
    });
    pump();
  }

  document.addEventListener("toggle", function (event) {
    if (event.target.open) { renderVisible(event.target); }
  }, true);
  document.addEventListener("DOMContentLoaded", function () { renderVisible(document); });
}());
