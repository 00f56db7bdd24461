"""Elastic's alert suppression (`alert_suppression`), in event time, on a topic.

Kibana gives every alert of a suppressed rule an instance id hashed from the rule and the
values of the `group_by` fields (`kibana.alert.suppression.terms`). The first alert of an
instance opens a window: `duration` from its time, or, without a duration, the rule run it was
found in. A later alert of the same instance inside the window is not written; Kibana adds it to
the first alert instead, in place: `kibana.alert.suppression.docs_count` (the alerts absorbed,
0 on the first), `.end` (the latest absorbed alert's time), `kibana.alert.last_detected`. An
alert missing a `group_by` field is grouped with the others missing it (`suppress`, the
default) or sent on its own without suppression fields (`doNotSuppress`).

A topic cannot update a message, so the count reaches the SIEM as an update alert: when the
window closes (the watermark passes its end) and it absorbed any alert, the first alert is sent
again, whole (event.original included), same `kibana.alert.uuid` and instance id, with the final
count and end. An indexer that writes by alert id (Elastic's own `_id`) replaces the first
document with it, as Kibana's update does; a consumer that keeps the last document per id sees
the same. Alerts found in the same
evaluation (one `due`) as the window's close go out once, already counted, as Kibana counts
the alerts of one run in memory.

Order: matches wait until the watermark passes their time and are then taken in event-time
order (ties by alert id), so the alerts and counts depend on the events, not on the order
partitions deliver them in: the stream and `scan` agree. A match offered after the watermark
passed its time is late: it is counted in `late_matches` and folded in at the next `due` (into
its group's open window if its time is inside it, else it opens one), never dropped.

Times are the rule's event time (its `timestamp_override`, else `@timestamp`), as Kibana takes
the suppression time from the alert's primary timestamp. Kibana's window starts at the first
alert's creation (`kibana.alert.start >= now - duration`); in event time that is the first
alert's time, and a match exactly `duration` later is still inside.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consumer.alerts.document import Alert, Headers
from consumer.rules.loader import LoadedRule
from consumer.rules.model import AlertSuppression, RuleDefinition

INSTANCE_NAMESPACE = uuid.UUID("6d1f0a9e-2b7c-4e58-9c3a-7f4b1e8d5a20")
"""UUIDv5 namespace of `kibana.alert.instance.id`; changing it changes every instance id."""

Terms = tuple[object, ...]
"""The group_by values of one instance, in group_by order (sorted tuples for multi-values)."""


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def field_value(document: Mapping[str, Any], dotted: str) -> object:
    """A field of a nested alert document, whichever way its dotted name is split into
    objects (a column named `Esql.count` may sit under `Esql`), as Kibana's robustGet."""
    if dotted in document:
        return document[dotted]
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        node = document.get(head)
        if isinstance(node, Mapping):
            found = field_value(node, ".".join(parts[cut:]))
            if found is not None:
                return found
    return None


def _term(value: object) -> object:
    """A term as Kibana keeps it: a list sorted, an empty one missing."""
    if isinstance(value, list):
        if not value:
            return None
        return tuple(sorted(value, key=_canonical))
    return value


def instance_id(rule_id: str, terms: Terms) -> str:
    """The same rule and group_by values give the same instance, window after window."""
    return str(uuid.uuid5(INSTANCE_NAMESPACE, f"{rule_id}:{_canonical(list(terms))}"))


def _put(document: dict[str, Any], dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    node = document
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def alert_to_json(alert: Alert) -> dict[str, Any]:
    """An alert as JSON, for a changelog or a repartition row: given back as it was built."""

    def value(item: str | bytes | None) -> object:
        return {"b": base64.b64encode(item).decode()} if isinstance(item, bytes) else item

    return {
        "id": alert.alert_id,
        "key": base64.b64encode(alert.key).decode(),
        "headers": [[name, value(item)] for name, item in alert.headers],
        "document": alert.document,
    }


def alert_from_json(data: Mapping[str, Any]) -> Alert:
    def value(item: object) -> str | bytes | None:
        if isinstance(item, dict):
            return base64.b64decode(item["b"])
        return item if item is None or isinstance(item, str) else str(item)

    headers: Headers = [(str(name), value(item)) for name, item in data["headers"]]
    return Alert(str(data["id"]), base64.b64decode(data["key"]), headers, data["document"])


@dataclass(slots=True)
class _Match:
    ts_ms: int
    run_ms: int
    alert: Alert


@dataclass(slots=True)
class _Window:
    first: Alert
    """The first alert, whole: the update replaces it, so it repeats every field."""
    first_ms: int
    run_ms: int
    start_ms: int
    end_ms: int
    count: int = 0
    sent: bool = True
    """False only inside the `due` that opened the window, so never in a changelog."""


class Suppressor:
    """One rule's suppression state: open windows and matches waiting for the watermark, per
    instance (group_by values)."""

    def __init__(self, rule_id: str, suppression: AlertSuppression, interval_ms: int) -> None:
        if not suppression.group_by:
            raise ValueError("alert suppression needs group_by fields")
        self.rule_id = rule_id
        self.group_by = tuple(suppression.group_by)
        self.duration_ms = None if suppression.duration is None else suppression.duration.total_ms()
        self.suppress_missing = suppression.missing_fields_strategy == "suppress"
        self.interval_ms = interval_ms
        self._pending: dict[Terms, list[_Match]] = {}
        self._windows: dict[Terms, _Window] = {}
        self._released_to: int | None = None
        self._changed: set[Terms] = set()
        self.suppressed = 0
        """Alerts absorbed into a first alert's count."""
        self.late_matches = 0
        """Matches offered after the watermark had passed their time."""

    @classmethod
    def for_rule(cls, rule: LoadedRule | RuleDefinition) -> Suppressor | None:
        """The rule's suppressor, or None when it has no alert_suppression."""
        definition = rule.definition.rule if isinstance(rule, LoadedRule) else rule
        if definition.alert_suppression is None or not definition.alert_suppression.group_by:
            return None  # a threshold rule's suppression groups by its threshold fields
        interval_ms = round(definition.interval.total_seconds() * 1000)
        return cls(definition.rule_id, definition.alert_suppression, interval_ms)

    def terms(self, alert: Alert) -> Terms | None:
        """The alert's group_by values; None when one is missing and missing fields are not
        suppressed."""
        values = tuple(_term(field_value(alert.document, name)) for name in self.group_by)
        if not self.suppress_missing and any(value is None for value in values):
            return None
        return values

    def offer(self, alert: Alert, ts_ms: int, run_ms: int | None = None) -> Alert | None:
        """Take one alert found at event time `ts_ms` (by the run at `run_ms`; for a
        row-at-a-time rule, the first run that reads it). Returns it at once when it cannot be
        suppressed; else it waits for `due`."""
        terms = self.terms(alert)
        if terms is None:
            return alert
        if run_ms is None:
            run_ms = -(-ts_ms // self.interval_ms) * self.interval_ms
        if self._released_to is not None and ts_ms <= self._released_to:
            self.late_matches += 1
        self._pending.setdefault(terms, []).append(_Match(ts_ms, run_ms, alert))
        self._changed.add(terms)
        return None

    def _closes_at(self, window: _Window) -> int:
        return window.run_ms if self.duration_ms is None else window.first_ms + self.duration_ms

    def _inside(self, window: _Window, match: _Match) -> bool:
        if self.duration_ms is None:
            return match.run_ms == window.run_ms
        return match.ts_ms <= window.first_ms + self.duration_ms

    def _document(self, window: _Window, terms: Terms) -> Alert:
        document = copy.deepcopy(window.first.document)
        fields = {
            "kibana.alert.instance.id": instance_id(self.rule_id, terms),
            "kibana.alert.suppression.terms": [
                {"field": name, "value": list(value) if isinstance(value, tuple) else value}
                for name, value in zip(self.group_by, terms, strict=True)
            ],
            "kibana.alert.suppression.start": _iso(window.start_ms),
            "kibana.alert.suppression.end": _iso(window.end_ms),
            "kibana.alert.suppression.docs_count": window.count,
            "kibana.alert.last_detected": _iso(window.end_ms),
        }
        for dotted, value in fields.items():
            _put(document, dotted, value)
        return Alert(window.first.alert_id, window.first.key, window.first.headers, document)

    def _open(self, terms: Terms, match: _Match) -> None:
        self._windows[terms] = _Window(match.alert, match.ts_ms, match.run_ms, match.ts_ms,
                                       match.ts_ms, sent=False)

    def due(self, watermark_ms: int) -> list[Alert]:
        """The alerts to send now that the watermark is at `watermark_ms`: first alerts of
        new windows, and the final count of each window that closed having absorbed any."""
        return self._release(watermark_ms, close_all=False)

    def flush(self) -> list[Alert]:
        """Everything left, as at the end of a finite input: every window closes."""
        return self._release(None, close_all=True)

    def _release(self, watermark_ms: int | None, close_all: bool) -> list[Alert]:
        out: list[Alert] = []
        for terms in sorted(self._pending, key=_canonical):
            matches = self._pending[terms]
            ready = [m for m in matches if watermark_ms is None or m.ts_ms <= watermark_ms]
            if not ready:
                continue
            waiting = [m for m in matches if watermark_ms is not None and m.ts_ms > watermark_ms]
            if waiting:
                self._pending[terms] = waiting
            else:
                del self._pending[terms]
            self._changed.add(terms)
            for match in sorted(ready, key=lambda m: (m.ts_ms, m.alert.alert_id)):
                window = self._windows.get(terms)
                if window is not None and self._inside(window, match):
                    window.count += 1
                    window.start_ms = min(window.start_ms, match.ts_ms)
                    window.end_ms = max(window.end_ms, match.ts_ms)
                    self.suppressed += 1
                    continue
                if window is not None:
                    out += self._close(terms, window)
                self._open(terms, match)
        def closes(window: _Window) -> bool:
            return close_all or (
                watermark_ms is not None and self._closes_at(window) <= watermark_ms
            )

        acting = [(terms, window) for terms, window in self._windows.items()
                  if not window.sent or closes(window)]
        for terms, window in sorted(acting, key=lambda item: _canonical(item[0])):
            if closes(window):
                out += self._close(terms, window)
                self._changed.add(terms)
            else:
                out.append(self._document(window, terms))
                window.sent = True
        if watermark_ms is not None and (
            self._released_to is None or watermark_ms > self._released_to
        ):
            self._released_to = watermark_ms
        return out

    def _close(self, terms: Terms, window: _Window) -> list[Alert]:
        """The window's last word: its first alert if not sent yet (already counted), else
        the update when it absorbed any."""
        del self._windows[terms]
        if not window.sent or window.count:
            return [self._document(window, terms)]
        return []

    # --- metrics ------------------------------------------------------------------------------

    @property
    def open_groups(self) -> int:
        return len(self._windows.keys() | self._pending.keys())

    @property
    def state_bytes(self) -> int:
        """Bytes of the state as its changelog holds it; walks it all, for metrics time."""
        return sum(len(_canonical(self.dump_group(terms))) for terms in
                   self._windows.keys() | self._pending.keys())

    # --- changelog ----------------------------------------------------------------------------

    def take_changed(self) -> set[Terms]:
        changed, self._changed = self._changed, set()
        return changed

    def dump_group(self, terms: Terms) -> dict[str, Any] | None:
        """One instance's window and waiting matches as JSON (None: nothing left)."""
        window = self._windows.get(terms)
        pending = self._pending.get(terms, [])
        if window is None and not pending:
            return None
        return {
            "window": None if window is None else {
                "first": alert_to_json(window.first), "first_ms": window.first_ms,
                "run_ms": window.run_ms, "start_ms": window.start_ms, "end_ms": window.end_ms,
                "count": window.count,
            },
            "pending": [[m.ts_ms, m.run_ms, alert_to_json(m.alert)] for m in pending],
        }

    def load_group(self, terms: Terms, data: Mapping[str, Any]) -> None:
        window = data.get("window")
        self._windows.pop(terms, None)
        self._pending.pop(terms, None)
        if window is not None:
            self._windows[terms] = _Window(
                alert_from_json(window["first"]), int(window["first_ms"]), int(window["run_ms"]),
                int(window["start_ms"]), int(window["end_ms"]), int(window["count"]),
            )
        pending = [_Match(int(ts), int(run), alert_from_json(alert))
                   for ts, run, alert in data.get("pending") or []]
        if pending:
            self._pending[terms] = pending

    def dump_progress(self) -> dict[str, int | None]:
        return {"released_to": self._released_to, "suppressed": self.suppressed,
                "late_matches": self.late_matches}

    def load_progress(self, data: Mapping[str, Any]) -> None:
        self._released_to = data.get("released_to")
        self.suppressed = int(data.get("suppressed") or 0)
        self.late_matches = int(data.get("late_matches") or 0)

    def dump(self) -> dict[str, Any]:
        keys = sorted(self._windows.keys() | self._pending.keys(), key=_canonical)
        return {"progress": self.dump_progress(),
                "groups": [[_json_terms(terms), self.dump_group(terms)] for terms in keys]}

    def load(self, data: Mapping[str, Any]) -> None:
        self._windows, self._pending, self._changed = {}, {}, set()
        self.load_progress(data.get("progress") or {})
        for terms, group in data.get("groups") or []:
            self.load_group(terms_from_json(terms), group)


def _json_terms(terms: Terms) -> list[object]:
    return [list(value) if isinstance(value, tuple) else value for value in terms]


def terms_from_json(data: object) -> Terms:
    """Terms back from their JSON form (a changelog key)."""
    if not isinstance(data, list):
        raise ValueError(f"terms are a JSON array, got {data!r}")
    return tuple(tuple(value) if isinstance(value, list) else value for value in data)
