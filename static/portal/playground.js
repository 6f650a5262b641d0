// The playground: send the form, read the server-sent events as they arrive
// (event_stream.js), and append each piece of the answer to the page.
(function () {
  "use strict";
  const form = document.getElementById("playground");
  if (!form) return;
  const target = document.getElementById("target");
  const answer = document.getElementById("answer");
  const meta = document.getElementById("answer-meta");
  const send = document.getElementById("send");

  function syncTarget() {
    const option = target.options[target.selectedIndex];
    document.getElementById("app").value = option.dataset.app;
    document.getElementById("model").value = option.dataset.model;
  }
  target.addEventListener("change", syncTarget);
  syncTarget();

  function handle(name, payload) {
    if (name === "delta") {
      answer.textContent += payload.text;
    } else if (name === "done") {
      const usage = payload.usage;
      meta.textContent = usage
        ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`
        : "Done.";
    } else if (name === "error") {
      meta.textContent = payload.message;
      meta.classList.add("error");
    }
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    answer.textContent = "";
    meta.textContent = "Waiting for the model…";
    meta.classList.remove("error");
    send.disabled = true;
    try {
      await window.porticoPostEvents(form, new FormData(form), handle);
    } catch (error) {
      meta.textContent = "The connection was interrupted: " + error;
      meta.classList.add("error");
    } finally {
      send.disabled = false;
    }
  });
})();
