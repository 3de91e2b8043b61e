"""Audit events as exported: callgate's own JSON (one object per line), or OCSF 1.x.

Both carry the event's store id (``id``; OCSF ``metadata.uid``), unique and never reused, so a
receiver that gets an event twice (delivery is at least once) can drop the copy.

The callgate form keeps everything needed to re-check the hash chain outside callgate: the
payload object re-encoded with :func:`callgate.store.canonical_json` is the text that was hashed.

OCSF (https://schema.ocsf.io, 1.x): SQL sessions map to Datastore Activity (class 6005, category
6 Application Activity); HTTP sessions, once recorded, to API Activity (class 6003). Fields
used: ``activity_id``/``activity_name``, ``type_uid`` (class_uid * 100 + activity_id), ``time``
(ms), ``severity_id``, ``status_id``/``status``/``status_detail``, ``disposition_id``,
``metadata`` (``uid``, ``version``, ``product``, ``sequence``, ``correlation_uid``), ``actor``
(``user``, ``session``, ``app_name``), ``src_endpoint`` (``ip``, ``port``), ``database``,
``query_info`` (``query_string``, ``uid``, ``data``), ``message`` and ``unmapped`` (the original
event).
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Final

from callgate import __version__
from callgate.store.records import EventRecord, SessionRecord

OCSF_VERSION: Final = "1.3.0"
CATEGORY_APPLICATION: Final = 6
CLASS_DATASTORE: Final = 6005
CLASS_API: Final = 6003
HTTP_PROTOCOLS: Final = frozenset({"http", "api", "mcp"})

# Datastore Activity activity_id values (OCSF 1.x)
_READ, _CONNECT, _QUERY, _OTHER = 1, 3, 4, 99
_API_ACTIVITY: Final = {"POST": 1, "GET": 2, "HEAD": 2, "PUT": 3, "PATCH": 3, "DELETE": 4}
_DATASTORE_NAMES: Final = {1: "Read", 3: "Connect", 4: "Query", 99: "Other"}
_API_NAMES: Final = {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}


def iso_time(ts: float) -> str:
    when = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def payload_of(event: EventRecord) -> Any:
    """The decoded payload; its raw text when it is not JSON (an edited store)."""
    try:
        return json.loads(event.payload)
    except ValueError:
        return event.payload


def event_json(event: EventRecord) -> dict[str, Any]:
    """callgate's own export form of one event."""
    return {
        "id": event.id,
        "session_id": event.session_id,
        "seq": event.seq,
        "ts": event.ts,
        "time": iso_time(event.ts),
        "type": event.type,
        "payload": payload_of(event),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def _endpoint(addr: str | None) -> dict[str, Any]:
    if not addr:
        return {}
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        return {"ip": addr.strip("[]")}
    return {"ip": host.strip("[]"), "port": int(port)}


def _actor(session: SessionRecord | None, data: dict[str, Any]) -> dict[str, Any]:
    if session is None:
        return {"user": {"name": str(data.get("subject") or "unknown")}}
    user: dict[str, Any] = {"name": session.subject, "uid": session.subject}
    if session.groups:
        user["groups"] = [{"name": g} for g in session.groups]
    actor: dict[str, Any] = {
        "user": user,
        "session": {
            "uid": session.id,
            "created_time": int(session.started_at * 1000),
            **({"issuer": session.issuer} if session.issuer else {}),
            **({"credential_uid": session.credential_id} if session.credential_id else {}),
        },
    }
    if session.application_name:
        actor["app_name"] = session.application_name
    return actor


def _status(ok: bool | None, detail: str | None = None) -> dict[str, Any]:
    if ok is None:
        out: dict[str, Any] = {"status_id": 0, "status": "Unknown"}
    else:
        out = {"status_id": 1, "status": "Success"} if ok else {"status_id": 2, "status": "Failure"}
    if detail:
        out["status_detail"] = detail
    return out


def _sql_activity(event: EventRecord, data: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    """``(activity_id, class-specific fields, message)`` for a Datastore Activity event."""
    kind = event.type
    query_uid = f"{event.session_id}:{event.seq}"
    if kind == "session.start":
        return (
            _CONNECT,
            _status(True),
            f"{data.get('subject')} connected to {data.get('connection')}",
        )
    if kind == "auth.failure":
        reason = str(data.get("reason") or "")
        return _CONNECT, _status(False, reason), f"authentication failed: {reason}"
    if kind == "query":
        verdict = str(data.get("verdict") or "")
        fields = {
            **_status(verdict != "deny", str(data.get("reason") or "") or None),
            "disposition_id": 2 if verdict == "deny" else 1,
            "disposition": "Blocked" if verdict == "deny" else "Allowed",
            "query_info": {"query_string": str(data.get("sql") or ""), "uid": query_uid},
        }
        return _QUERY, fields, f"{verdict}: {data.get('sql')}"
    if kind == "query.result":
        error = data.get("error")
        uid = f"{event.session_id}:{data.get('statement_seq')}"
        if isinstance(error, dict):
            detail = f"{error.get('sqlstate')}: {error.get('message')}"
            fields = {**_status(False, detail), "query_info": {"uid": uid}}
            return _QUERY, fields, f"statement failed: {detail}"
        fields = {**_status(True), "query_info": {"uid": uid}}
        if isinstance(data.get("duration_ms"), int | float):
            fields["duration"] = int(data["duration_ms"])
        return _QUERY, fields, str(data.get("tag") or "ok")
    if kind == "query.rows":
        uid = f"{event.session_id}:{data.get('statement_seq')}"
        info = {"uid": uid, "data": {"columns": data.get("columns"), "rows": data.get("rows")}}
        return _READ, {**_status(True), "query_info": info}, "result rows recorded"
    if kind == "query.masked":
        uid = f"{event.session_id}:{data.get('statement_seq')}"
        info = {"uid": uid, "data": {"masked": data.get("columns")}}
        return _READ, {**_status(True), "query_info": info}, "result values masked"
    if kind == "session.end":
        fields = {**_status(True), "activity_name": "Disconnect"}
        return _OTHER, fields, f"session ended: {data.get('reason')}"
    return _OTHER, _status(None), kind


def ocsf_event(event: EventRecord, session: SessionRecord | None) -> dict[str, Any]:
    """One event in OCSF 1.x (see the module docstring)."""
    raw = payload_of(event)
    data: dict[str, Any] = raw if isinstance(raw, dict) else {"value": raw}
    protocol = session.protocol if session is not None else str(data.get("protocol") or "")
    http = protocol in HTTP_PROTOCOLS
    if http:
        class_uid, class_name = CLASS_API, "API Activity"
        method = str(data.get("method") or "").upper()
        activity = _API_ACTIVITY.get(method, _OTHER)
        ok = data.get("verdict") != "deny" if "verdict" in data else None
        fields: dict[str, Any] = _status(ok)
        if method:
            fields["api"] = {"operation": f"{method} {data.get('path', '')}".strip()}
        message = event.type
        activity_name = _API_NAMES[activity]
    else:
        class_uid, class_name = CLASS_DATASTORE, "Datastore Activity"
        activity, fields, message = _sql_activity(event, data)
        activity_name = str(fields.pop("activity_name", _DATASTORE_NAMES[activity]))
    severity_id = 3 if fields.get("status_id") == 2 else 1
    out: dict[str, Any] = {
        "activity_id": activity,
        "activity_name": activity_name,
        "category_uid": CATEGORY_APPLICATION,
        "category_name": "Application Activity",
        "class_uid": class_uid,
        "class_name": class_name,
        "type_uid": class_uid * 100 + activity,
        "type_name": f"{class_name}: {activity_name}",
        "time": int(event.ts * 1000),
        "severity_id": severity_id,
        "severity": "Medium" if severity_id == 3 else "Informational",
        "message": message,
        "metadata": {
            "uid": str(event.id),
            "version": OCSF_VERSION,
            "product": {"name": "callgate", "vendor_name": "callgate", "version": __version__},
            "log_name": "audit",
            "sequence": event.seq,
            **({"correlation_uid": event.session_id} if event.session_id else {}),
        },
        "actor": _actor(session, data),
        "unmapped": {"callgate": event_json(event)},
        **fields,
    }
    source = session.client_addr if session is not None else data.get("source")
    endpoint = _endpoint(str(source) if source else None)
    if endpoint:
        out["src_endpoint"] = endpoint
    if not http:
        database = session.connection if session is not None else data.get("connection")
        out["database"] = {"name": str(database or "unknown"), "type_id": 1, "type": "Relational"}
    return out


def render(event: EventRecord, session: SessionRecord | None, fmt: str) -> dict[str, Any]:
    """``fmt``: ``jsonl`` (callgate's form) or ``ocsf``."""
    return ocsf_event(event, session) if fmt == "ocsf" else event_json(event)
