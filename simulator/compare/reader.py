"""Read a run directory of any known format version into one shape.

Every reader of old runs goes through here: :func:`load_run` checks that a
folder is a run directory, reads ``summary.json``, ``ledger.jsonl`` and the
YAML copies, and rewrites version-0 field names to those of version 1
(docs/run-format.md describes both). Events are streamed, because
``events.jsonl`` of a long run does not fit in memory comfortably.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from simulator.compare.errors import InvalidRunError

CURRENT_FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (0, 1)
LEDGER_STATES = ("delivered", "failed", "never-attempted", "pending")

# Version 0 (the pre-release layout, before summary.json carried
# format_version) used other names for some fields; version 1 renamed them.
_V0_ROW_FIELDS = {
    "uid": "sop_instance_uid",
    "sop_class": "sop_class_uid",
    "transfer_syntax": "transfer_syntax_uid",
    "study_uid": "study_instance_uid",
    "series_uid": "series_instance_uid",
    "file": "source_file",
    "result": "state",
    "path": "hops",
    "started_mono": "first_attempt_mono",
    "verified": "intact",
}
_V0_STATES = {"not-attempted": "never-attempted"}
_V0_EVENT_FIELDS = {"event": "kind", "mono": "t_mono", "wall": "t_wall"}
_V0_SUMMARY_FIELDS = {"totals": "states"}
_REQUIRED_ROW_FIELDS = ("sop_instance_uid", "destination", "source", "sop_class_uid",
                        "transfer_syntax_uid", "state")


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger row in the version-1 shape, with the line it came from."""

    sop_instance_uid: str
    destination: str
    source: str
    sop_class_uid: str
    transfer_syntax_uid: str
    state: str
    source_file: str = ""
    study_instance_uid: str = ""
    service: str = "store"
    hops: tuple[str, ...] = ()
    attempts: int = 0
    status: str | None = None
    failure: dict[str, Any] | None = None
    intact: bool | None = None
    integrity: dict[str, Any] | None = None
    first_attempt_mono: float | None = None
    finished_mono: float | None = None
    line: int = 0

    @property
    def delivered(self) -> bool:
        """Whether the object arrived and nothing unexplained changed on the way."""
        return self.state == "delivered" and self.intact is not False

    @property
    def failure_kind(self) -> str | None:
        return None if self.failure is None else self.failure.get("failure_kind")

    @property
    def failure_hop(self) -> str | None:
        return None if self.failure is None else self.failure.get("hop")

    @property
    def failure_reason(self) -> str | None:
        return None if self.failure is None else self.failure.get("reason")


@dataclass
class RunData:
    """A run directory as read: summary, ledger, YAML copies, and a way to stream events."""

    path: Path
    format_version: int
    summary: dict[str, Any]
    rows: list[LedgerEntry]
    topology: dict[str, Any] | None
    scenario: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.summary.get("run_id") or self.path.name)

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    def has_events(self) -> bool:
        return self.events_path.is_file()

    def iter_events(self, kinds: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """Yield the events in file order, in the version-1 shape; only ``kinds`` when given."""
        if not self.has_events():
            return
        selected_kinds = None if kinds is None else frozenset(kinds)
        with self.events_path.open(encoding="utf-8") as stream:
            for number, text in enumerate(stream, start=1):
                if not text.strip():
                    continue
                event = _parse_json_object(self.events_path, number, text)
                if self.format_version == 0:
                    event = _rename(event, _V0_EVENT_FIELDS)
                if selected_kinds is None or event.get("kind") in selected_kinds:
                    yield event

    def link_endpoints(self) -> dict[str, tuple[str, str]]:
        """Map each link name of the topology copy to its (from, to) nodes."""
        endpoints: dict[str, tuple[str, str]] = {}
        for link in (self.topology or {}).get("links") or []:
            if not isinstance(link, dict) or "from" not in link or "to" not in link:
                continue
            sender, receiver = str(link["from"]), str(link["to"])
            endpoints[str(link.get("name") or f"{sender}->{receiver}")] = (sender, receiver)

        return endpoints

    def node_names(self) -> set[str]:
        nodes = (self.topology or {}).get("nodes") or {}
        return {str(name) for name in nodes} if isinstance(nodes, dict) else set()


def load_run(path: Path) -> RunData:
    """Read a run directory; raise InvalidRunError naming the path and the problem."""
    _check_run_folder(path)
    summary = _read_summary(path / "summary.json")
    version = _format_version(path / "summary.json", summary)
    if version == 0:
        summary = _rename(summary, _V0_SUMMARY_FIELDS)
    rows = _read_ledger(path / "ledger.jsonl", version)
    notes: list[str] = []
    topology = _read_yaml_copy(path / "topology.yaml", notes)
    scenario = _read_yaml_copy(path / "scenario.yaml", notes)
    if not (path / "events.jsonl").is_file():
        notes.append("events.jsonl is missing, so timing and the timeline are not available")

    return RunData(path, version, summary, rows, topology, scenario, notes)


def _check_run_folder(path: Path) -> None:
    if not path.exists():
        raise InvalidRunError(path, "not found; give the folder that `rehearse run --out` wrote")
    if not path.is_dir():
        raise InvalidRunError(path, "not a folder; give a run directory, not a file in it")
    if (path / "summary.json").is_file():
        if not (path / "ledger.jsonl").is_file():
            raise InvalidRunError(path, "not a complete run directory: summary.json is there "
                                        "but ledger.jsonl is missing; rerun the rehearsal")
        return
    if (path / "events.jsonl").is_file():
        raise InvalidRunError(path, "the run did not finish: events.jsonl is there but "
                                    "summary.json is missing (the run was killed or is still "
                                    "running); rerun it to compare")
    raise InvalidRunError(path, "not a run directory: it has no summary.json or ledger.jsonl; "
                                "give the folder that `rehearse run --out` wrote")


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRunError(path, f"invalid JSON ({exc}); the run directory is damaged, "
                                    "rerun the rehearsal") from exc
    if not isinstance(document, dict):
        raise InvalidRunError(path, "expected a JSON object at the top level, found "
                                    f"{type(document).__name__}")

    return document


def _format_version(path: Path, summary: dict[str, Any]) -> int:
    if "format_version" not in summary:
        return 0
    version = summary["format_version"]
    if type(version) is not int or version not in SUPPORTED_FORMAT_VERSIONS:
        known = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
        raise InvalidRunError(path, f"unknown format_version {version!r}; this version of "
                                    f"rehearse reads run formats {known}, so compare this run "
                                    "with the rehearse version that wrote it or a newer one")

    return version


def _read_ledger(path: Path, version: int) -> list[LedgerEntry]:
    rows: list[LedgerEntry] = []
    with path.open(encoding="utf-8") as stream:
        for number, text in enumerate(stream, start=1):
            if not text.strip():
                continue
            record = _parse_json_object(path, number, text)
            if version == 0:
                record = _upgrade_v0_row(record)
            rows.append(_ledger_entry(path, number, record))

    return rows


def _parse_json_object(path: Path, number: int, text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRunError(path, f"line {number}: invalid JSON ({exc.msg}); the file is "
                                    "damaged, rerun the rehearsal") from exc
    if not isinstance(record, dict):
        raise InvalidRunError(path, f"line {number}: expected a JSON object, found "
                                    f"{type(record).__name__}")

    return record


def _rename(record: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names.get(key, key): value for key, value in record.items()}


def _upgrade_v0_row(record: dict[str, Any]) -> dict[str, Any]:
    row = _rename(record, _V0_ROW_FIELDS)
    row["state"] = _V0_STATES.get(row.get("state"), row.get("state"))  # type: ignore[arg-type]
    error = row.pop("error", None)
    row["failure"] = None if error is None else {
        "failure_kind": error.get("kind"), "hop": error.get("hop"), "side": error.get("side"),
        "permanent": error.get("permanent"), "reason": error.get("message"), "detail": {},
    }
    mismatches = row.pop("mismatches", None)
    if row.get("intact") is False:
        row["integrity"] = {"unexplained": list(mismatches or [])}

    return row


def _ledger_entry(path: Path, number: int, record: dict[str, Any]) -> LedgerEntry:
    missing = [name for name in _REQUIRED_ROW_FIELDS if not record.get(name)]
    if missing:
        raise InvalidRunError(path, f"line {number}: ledger row without "
                                    f"{', '.join(missing)}; the file is damaged or not a ledger")
    state = record["state"]
    if state not in LEDGER_STATES:
        raise InvalidRunError(path, f"line {number}: unknown state {state!r}; expected one of "
                                    f"{', '.join(LEDGER_STATES)}")
    failure = record.get("failure")

    return LedgerEntry(
        sop_instance_uid=str(record["sop_instance_uid"]),
        destination=str(record["destination"]),
        source=str(record["source"]),
        sop_class_uid=str(record["sop_class_uid"]),
        transfer_syntax_uid=str(record["transfer_syntax_uid"]),
        state=str(state),
        source_file=str(record.get("source_file") or ""),
        study_instance_uid=str(record.get("study_instance_uid") or ""),
        service=str(record.get("service") or "store"),
        hops=tuple(str(h) for h in record.get("hops") or ()),
        attempts=int(record.get("attempts") or 0),
        status=record.get("status"),
        failure=failure if isinstance(failure, dict) else None,
        intact=record.get("intact"),
        integrity=record.get("integrity"),
        first_attempt_mono=record.get("first_attempt_mono"),
        finished_mono=record.get("finished_mono"),
        line=number,
    )


def _read_yaml_copy(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        notes.append(f"{path.name} is missing, so its configuration is not compared")
        return None
    try:
        document = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (YAMLError, UnicodeDecodeError) as exc:
        raise InvalidRunError(path, f"invalid YAML ({exc}); the run directory is damaged, "
                                    "rerun the rehearsal") from exc
    if not isinstance(document, dict):
        raise InvalidRunError(path, "expected a YAML mapping at the top level")

    return document
