// The playground's streams: POST a form and hand each server-sent event to `onEvent`
// as it arrives, as (name, payload). No library; fetch streams natively.
window.porticoPostEvents = async function (form, body, onEvent) {
  "use strict";
  const response = await fetch(form.action, {
    method: "POST",
    body: body,
    headers: { Accept: "text/event-stream" },
    credentials: "same-origin",
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  function handle(block) {
    let name = "message";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) name = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (data) onEvent(name, JSON.parse(data));
  }
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
};
