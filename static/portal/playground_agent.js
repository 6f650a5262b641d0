// The playground's Agents tab: send one message, read the server-sent events as they
// arrive (event_stream.js: task, status, artifact, message, error, done) and show each
// at once. Every
// text comes from an agent, so it is only ever set as textContent, never as markup.
// The conversation's contextId is kept and sent with the next message.
(function () {
  "use strict";
  const form = document.getElementById("agent-playground");
  if (!form) return;
  const target = document.getElementById("agent-target");
  const context = document.getElementById("agent-context");
  const conversation = document.getElementById("agent-conversation");
  const meta = document.getElementById("agent-meta");
  const send = document.getElementById("agent-send");
  const message = document.getElementById("agent-message");

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function newConversation() {
    context.value = "";
    conversation.replaceChildren();
    meta.textContent = "";
    meta.classList.remove("error");
  }
  document.getElementById("agent-new").addEventListener("click", newConversation);
  target.addEventListener("change", newConversation);

  function showContext() {
    meta.textContent = context.value
      ? "The next message continues this conversation (New conversation starts another)."
      : "";
  }

  function turnFor(text) {
    const turn = element("div", "agent-turn");
    turn.appendChild(element("div", "agent-you", text));
    const reply = element("div", "agent-reply");
    turn.appendChild(reply);
    conversation.appendChild(turn);
    return { reply: reply, artifacts: new Map() };
  }

  function handle(turn, name, payload) {
    if (payload.contextId) context.value = payload.contextId;
    if (name === "task") {
      turn.reply.appendChild(element("div", "agent-status muted", "Task " + payload.state));
    } else if (name === "status") {
      const line = element("div", "agent-status");
      line.appendChild(element("span", "badge state-" + payload.state, payload.state));
      if (payload.text) line.appendChild(element("span", "agent-text", " " + payload.text));
      turn.reply.appendChild(line);
    } else if (name === "artifact") {
      let block = turn.artifacts.get(payload.artifactId);
      if (!block || !payload.append) {
        const box = element("div", "agent-artifact");
        if (payload.name) box.appendChild(element("strong", "", payload.name));
        block = element("pre", "agent-artifact-text", "");
        box.appendChild(block);
        turn.reply.appendChild(box);
        turn.artifacts.set(payload.artifactId, block);
      }
      block.textContent += payload.text;
    } else if (name === "message") {
      turn.reply.appendChild(element("div", "agent-text agent-message", payload.text));
    } else if (name === "done") {
      showContext();
    } else if (name === "error") {
      meta.textContent = payload.message;
      meta.classList.add("error");
    }
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const text = message.value.trim();
    if (!text) return;
    const turn = turnFor(text);
    const body = new FormData(form);
    message.value = "";
    meta.textContent = "Waiting for the agent…";
    meta.classList.remove("error");
    send.disabled = true;
    try {
      await window.porticoPostEvents(form, body, function (name, payload) {
        handle(turn, name, payload);
      });
    } catch (error) {
      meta.textContent = "The connection was interrupted: " + error;
      meta.classList.add("error");
    } finally {
      send.disabled = false;
    }
  });
})();
