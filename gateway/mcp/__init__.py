"""The MCP gateway: MCP products served to apps, in both protocol eras.

- ``index``: what a revision's MCP products offer, as approved (pinned tool definitions,
  argument validators, namespaced names for the aggregate endpoint), built once per
  revision;
- ``server``: the endpoints ``/mcp/<product>`` and ``/mcp``: JSON-RPC over Streamable
  HTTP, stateless (2026-07-28) and session-based (2025-11-25 and older);
- ``sessions``: session ids of the older era, signed so that any gateway process can
  check them, and bound to the key that opened them;
- ``upstream``: the gateway as an MCP client of the servers behind the products, with
  their own credentials (never the app's), in whichever era they speak;
- ``search``: ranking tools by relevance to a task, for ``find_tools``.

Lists (tools, prompts, resources) are answered from the revision, never from the
upstream, so a server that changes its tools cannot change what apps see before an
admin approves it; calls are checked against the pinned input schema before they leave.
"""
