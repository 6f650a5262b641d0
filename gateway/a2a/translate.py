"""A2A v0.3 ⇄ v1.0, on the JSON the two versions put on the wire.

The gateway works in v1.0 inside: a v0.3 app's request is turned into v1.0 on the way
in and the answer back into v0.3 on the way out; a v0.3 agent gets v0.3 and its answers
are read back into v1.0. Dicts are translated as they are (not through protobuf), so
numbers, unknown fields and metadata pass untouched.

What differs (the specification's "what's new in v1.0", checked against the SDK's own
conversions): method names; ``kind`` discriminators in v0.3 where v1.0 wraps
(``{"task": …}``); roles ``user``/``agent`` vs ``ROLE_USER``/``ROLE_AGENT``; task states
``working`` vs ``TASK_STATE_WORKING``; parts ``{"kind":"file","file":{"bytes"|"uri",
"mimeType","name"}}`` vs ``{"raw"|"url","mediaType","filename"}``; a data part's value
(v0.3 wants an object: anything else is wrapped as ``{"value": …}`` as the SDK does);
``final`` on v0.3 status updates, which v1.0 replaces by the end of the stream; and
``blocking`` vs ``returnImmediately``.
"""

from __future__ import annotations

from typing import Any

# v0.3 JSON-RPC method -> v1.0
FROM_V03_METHOD = {
    "message/send": "SendMessage",
    "message/stream": "SendStreamingMessage",
    "tasks/get": "GetTask",
    "tasks/cancel": "CancelTask",
    "tasks/resubscribe": "SubscribeToTask",
    "tasks/pushNotificationConfig/set": "CreateTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/get": "GetTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/list": "ListTaskPushNotificationConfigs",
    "tasks/pushNotificationConfig/delete": "DeleteTaskPushNotificationConfig",
    "agent/getAuthenticatedExtendedCard": "GetExtendedAgentCard",
}
TO_V03_METHOD = {v1: v03 for v03, v1 in FROM_V03_METHOD.items()}

_STATES = {
    "submitted": "TASK_STATE_SUBMITTED",
    "working": "TASK_STATE_WORKING",
    "completed": "TASK_STATE_COMPLETED",
    "failed": "TASK_STATE_FAILED",
    "canceled": "TASK_STATE_CANCELED",
    "rejected": "TASK_STATE_REJECTED",
    "input-required": "TASK_STATE_INPUT_REQUIRED",
    "auth-required": "TASK_STATE_AUTH_REQUIRED",
    "unknown": "TASK_STATE_UNSPECIFIED",
}
_STATES_V03 = {v1: v03 for v03, v1 in _STATES.items()}
TERMINAL = frozenset(
    {"TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_CANCELED", "TASK_STATE_REJECTED"}
)
# A stream also ends when the task waits for its client.
INTERRUPTED = frozenset({"TASK_STATE_INPUT_REQUIRED", "TASK_STATE_AUTH_REQUIRED"})
_ROLES = {"user": "ROLE_USER", "agent": "ROLE_AGENT"}
_ROLES_V03 = {"ROLE_USER": "user", "ROLE_AGENT": "agent"}
# A v1.0 data part that was not an object travels to v0.3 wrapped, marked as the SDK does.
_DATA_COMPAT = "data_part_compat"


class Malformed(ValueError):
    """The JSON is not the shape the protocol gives it; the message says where."""


# v0.3 -> v1.0 ---------------------------------------------------------------------------


def part_from_v03(part: Any) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise Malformed("a part must be an object")
    kind = part.get("kind")
    out: dict[str, Any]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise Malformed("a text part needs a 'text' string")
        out = {"text": part["text"]}
    elif kind == "file":
        file = part.get("file")
        if not isinstance(file, dict):
            raise Malformed("a file part needs a 'file' object")
        if isinstance(file.get("bytes"), str):
            out = {"raw": file["bytes"]}
        elif isinstance(file.get("uri"), str):
            out = {"url": file["uri"]}
        else:
            raise Malformed("a file part's 'file' needs 'bytes' or 'uri'")
        if isinstance(file.get("mimeType"), str):
            out["mediaType"] = file["mimeType"]
        if isinstance(file.get("name"), str):
            out["filename"] = file["name"]
    elif kind == "data":
        if "data" not in part:
            raise Malformed("a data part needs 'data'")
        data, metadata = part["data"], part.get("metadata")
        if (
            isinstance(metadata, dict)
            and metadata.get(_DATA_COMPAT)
            and isinstance(data, dict)
            and set(data) == {"value"}
        ):
            # What the SDK wraps on the way to v0.3 comes back as it was.
            data = data["value"]
            metadata = {k: v for k, v in metadata.items() if k != _DATA_COMPAT}
        out = {"data": data}
        if isinstance(metadata, dict) and metadata:
            out["metadata"] = metadata
        return out
    else:
        raise Malformed("a part's 'kind' must be text, file or data")
    if isinstance(part.get("metadata"), dict):
        out["metadata"] = part["metadata"]
    return out


def message_from_v03(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise Malformed("'message' must be an object")
    out = {k: v for k, v in message.items() if k not in ("kind", "role", "parts")}
    role = message.get("role")
    out["role"] = _ROLES.get(role, role) if isinstance(role, str) else role
    parts = message.get("parts")
    if not isinstance(parts, list):
        raise Malformed("a message needs a 'parts' list")
    out["parts"] = [part_from_v03(part) for part in parts]
    return out


def _status_from_v03(status: Any) -> Any:
    if not isinstance(status, dict):
        return status
    out = dict(status)
    state = status.get("state")
    if isinstance(state, str):
        out["state"] = _STATES.get(state, "TASK_STATE_UNSPECIFIED")
    if isinstance(status.get("message"), dict):
        out["message"] = message_from_v03(status["message"])
    return out


def _artifact_from_v03(artifact: Any) -> Any:
    if not isinstance(artifact, dict) or not isinstance(artifact.get("parts"), list):
        return artifact
    return {**artifact, "parts": [part_from_v03(part) for part in artifact["parts"]]}


def task_from_v03(task: Any) -> dict[str, Any]:
    if not isinstance(task, dict):
        raise Malformed("a task must be an object")
    out = {k: v for k, v in task.items() if k != "kind"}
    if "status" in task:
        out["status"] = _status_from_v03(task["status"])
    if isinstance(task.get("history"), list):
        out["history"] = [message_from_v03(m) for m in task["history"]]
    if isinstance(task.get("artifacts"), list):
        out["artifacts"] = [_artifact_from_v03(a) for a in task["artifacts"]]
    return out


def event_from_v03(event: Any) -> dict[str, Any]:
    """A v0.3 result (of ``message/send``, or an event of ``message/stream``) as a v1.0
    ``SendMessageResponse``/``StreamResponse``."""
    if not isinstance(event, dict):
        raise Malformed("a result must be an object")
    kind = event.get("kind")
    if kind == "task":
        return {"task": task_from_v03(event)}
    if kind == "message":
        return {"message": message_from_v03(event)}
    if kind == "status-update":
        update = {k: v for k, v in event.items() if k not in ("kind", "final")}
        update["status"] = _status_from_v03(event.get("status"))
        return {"statusUpdate": update}
    if kind == "artifact-update":
        update = {k: v for k, v in event.items() if k != "kind"}
        update["artifact"] = _artifact_from_v03(event.get("artifact"))
        return {"artifactUpdate": update}
    raise Malformed("a result's 'kind' must be task, message, status-update or artifact-update")


def params_from_v03(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The v1.0 params of a v0.3 request (``method`` is the v1.0 name)."""
    if method not in ("SendMessage", "SendStreamingMessage"):
        return dict(params)
    out = {k: v for k, v in params.items() if k not in ("message", "configuration")}
    out["message"] = message_from_v03(params.get("message"))
    configuration = params.get("configuration")
    if isinstance(configuration, dict):
        dropped = ("blocking", "pushNotificationConfig")
        converted = {k: v for k, v in configuration.items() if k not in dropped}
        if "blocking" in configuration:
            converted["returnImmediately"] = not configuration["blocking"]
        if "pushNotificationConfig" in configuration:
            converted["taskPushNotificationConfig"] = configuration["pushNotificationConfig"]
        out["configuration"] = converted
    elif configuration is not None:
        raise Malformed("'configuration' must be an object")
    return out


# v1.0 -> v0.3 ---------------------------------------------------------------------------


def part_to_v03(part: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any]
    if "text" in part:
        out = {"kind": "text", "text": part["text"]}
    elif "raw" in part or "url" in part:
        file: dict[str, Any] = {"bytes": part["raw"]} if "raw" in part else {"uri": part["url"]}
        if part.get("mediaType"):
            file["mimeType"] = part["mediaType"]
        if part.get("filename"):
            file["name"] = part["filename"]
        out = {"kind": "file", "file": file}
    else:
        data = part.get("data")
        if isinstance(data, dict):
            out = {"kind": "data", "data": data}
        else:
            metadata = {**(part.get("metadata") or {}), _DATA_COMPAT: True}
            return {"kind": "data", "data": {"value": data}, "metadata": metadata}
    if isinstance(part.get("metadata"), dict) and part["metadata"]:
        out["metadata"] = part["metadata"]
    return out


def message_to_v03(message: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in message.items() if k not in ("role", "parts")}
    out["kind"] = "message"
    role = message.get("role")
    out["role"] = _ROLES_V03.get(role, "agent") if isinstance(role, str) else "agent"
    out["parts"] = [part_to_v03(p) for p in message.get("parts") or [] if isinstance(p, dict)]
    return out


def _status_to_v03(status: Any) -> Any:
    if not isinstance(status, dict):
        return status
    out = dict(status)
    state = status.get("state")
    out["state"] = _STATES_V03.get(state, "unknown") if isinstance(state, str) else "unknown"
    if isinstance(status.get("message"), dict):
        out["message"] = message_to_v03(status["message"])
    return out


def _artifact_to_v03(artifact: Any) -> Any:
    if not isinstance(artifact, dict):
        return artifact
    parts = artifact.get("parts") or []
    return {**artifact, "parts": [part_to_v03(p) for p in parts if isinstance(p, dict)]}


def task_to_v03(task: dict[str, Any]) -> dict[str, Any]:
    out = dict(task)
    out["kind"] = "task"
    out["status"] = _status_to_v03(task.get("status") or {"state": "TASK_STATE_UNSPECIFIED"})
    if isinstance(task.get("history"), list):
        out["history"] = [message_to_v03(m) for m in task["history"] if isinstance(m, dict)]
    if isinstance(task.get("artifacts"), list):
        out["artifacts"] = [_artifact_to_v03(a) for a in task["artifacts"]]
    return out


def event_to_v03(event: dict[str, Any]) -> dict[str, Any]:
    """A v1.0 ``SendMessageResponse``/``StreamResponse`` as the v0.3 result."""
    if isinstance(event.get("task"), dict):
        return task_to_v03(event["task"])
    if isinstance(event.get("message"), dict):
        return message_to_v03(event["message"])
    if isinstance(event.get("statusUpdate"), dict):
        update = event["statusUpdate"]
        status = update.get("status") if isinstance(update.get("status"), dict) else {}
        state = status.get("state")
        return {
            **update,
            "kind": "status-update",
            "status": _status_to_v03(status),
            "final": state in TERMINAL or state in INTERRUPTED,
        }
    if isinstance(event.get("artifactUpdate"), dict):
        update = event["artifactUpdate"]
        return {
            **update,
            "kind": "artifact-update",
            "artifact": _artifact_to_v03(update.get("artifact")),
            "append": bool(update.get("append", False)),
            "lastChunk": bool(update.get("lastChunk", False)),
        }
    raise Malformed("a result must hold a task, message, statusUpdate or artifactUpdate")


def params_to_v03(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The v0.3 params of a v1.0 request (``method`` is the v1.0 name)."""
    if method not in ("SendMessage", "SendStreamingMessage"):
        return {k: v for k, v in params.items() if k != "tenant"}
    out = {k: v for k, v in params.items() if k not in ("message", "configuration", "tenant")}
    out["message"] = message_to_v03(params["message"])
    configuration = params.get("configuration")
    if isinstance(configuration, dict):
        converted = {
            k: v
            for k, v in configuration.items()
            if k not in ("returnImmediately", "taskPushNotificationConfig")
        }
        converted["blocking"] = not configuration.get("returnImmediately", False)
        out["configuration"] = converted
    return out
