// The playground: send the form, read the server-sent events as they arrive, and
// append each piece of the answer to the page. No library; fetch streams natively.
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

  function handle(block) {
    let name = "message";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) name = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (!data) return;
    const payload = JSON.parse(data);
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
      const response = await fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        headers: { Accept: "text/event-stream" },
        credentials: "same-origin",
      });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) !== -1) {
          handle(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (error) {
      meta.textContent = "The connection was interrupted: " + error;
      meta.classList.add("error");
    } finally {
      send.disabled = false;
    }
  });
})();
