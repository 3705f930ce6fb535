"""Compare a check's predictions with the ledger of a run, row by row.

A ledger row is keyed by (source modality, destination, source file, SOP
class, transfer syntax). Copies and repeats of one file share a key, so
rows and predictions are matched as multisets within a key. A prediction
accepts a row when:

- ``delivered``: the row is delivered, with no failure or only a DIMSE warning recorded;
- ``failed``: the row failed with the same failure kind on the same hop.
  The cause (proposal or acceptance), the A-ASSOCIATE-RJ
  result/source/reason or the DIMSE status must match where the kind has
  one. An integrity violation is recorded on a row that stays delivered;
- ``at-risk``: the row is delivered, or failed with the kind of one of the risks;
- ``never-attempted``: the row was never attempted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from simulator.capability.model import CheckResult, InstancePrediction, Outcome, PredictedFailure
from simulator.recording.failures import FailureKind

_DETAIL_KEYS = ("cause", "result", "source", "reason", "status")

Key = tuple[str, str, str | None, str, str]


@dataclass(frozen=True)
class Mismatch:
    """A ledger row no prediction accepts, or a prediction with no row left to match."""

    key: Key
    predicted: dict[str, Any] | None
    observed: dict[str, Any] | None

    def __str__(self) -> str:
        source, destination, source_file, _, _ = self.key
        where = f"{source} -> {destination} {source_file}"
        if self.observed is None:
            return f"{where}: predicted {_text(self.predicted)}, but the ledger has no such row"
        if self.predicted is None:
            return f"{where}: observed {_text(self.observed)}, which no prediction accepts"
        return f"{where}: predicted {_text(self.predicted)}, observed {_text(self.observed)}"


def compare_with_ledger(result: CheckResult,
                        rows: Iterable[Mapping[str, Any]]) -> list[Mismatch]:
    """Return every disagreement between the predictions and the store rows of a run's ledger."""
    predicted: dict[Key, list[InstancePrediction]] = {}
    for prediction in result.predictions:
        predicted.setdefault(_prediction_key(prediction), []).append(prediction)
    observed: dict[Key, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("service", "store") != "store":
            continue  # a retrieve's rows (C-MOVE, C-GET) are not routing predictions
        observed.setdefault(_row_key(row), []).append(row)
    mismatches: list[Mismatch] = []
    for key in dict.fromkeys([*predicted, *observed]):
        mismatches += _match(key, predicted.get(key, []), observed.get(key, []))

    return mismatches


def _match(key: Key, predictions: list[InstancePrediction],
           rows: list[Mapping[str, Any]]) -> list[Mismatch]:
    # Exact predictions pick their rows first, so an at-risk one cannot take a row they need.
    ordered = sorted(predictions, key=lambda p: p.outcome == Outcome.AT_RISK)
    left = list(rows)
    unmatched: list[InstancePrediction] = []
    for prediction in ordered:
        row = next((r for r in left if accepts(prediction, r)), None)
        if row is None:
            unmatched.append(prediction)
        else:
            left.remove(row)
    mismatches = []
    for prediction in unmatched:
        row = left.pop(0) if left else None
        mismatches.append(Mismatch(key, _predicted_summary(prediction),
                                   None if row is None else _observed_summary(row)))
    mismatches += [Mismatch(key, None, _observed_summary(row)) for row in left]

    return mismatches


def accepts(prediction: InstancePrediction, row: Mapping[str, Any]) -> bool:
    """Return True when the ledger row is an outcome the prediction allows."""
    state = row.get("state")
    failure = row.get("failure")
    if prediction.outcome == Outcome.DELIVERED:
        return _delivered(state, failure)
    if prediction.outcome == Outcome.NEVER_ATTEMPTED:
        return state == "never-attempted"
    if prediction.outcome == Outcome.FAILED:
        # An integrity violation leaves the state delivered, and its failure names the change.
        expected_state = "delivered" if prediction.failure is not None and \
            prediction.failure.failure_kind == FailureKind.INTEGRITY else "failed"
        return state == expected_state and prediction.failure is not None \
            and _same_failure(prediction.failure, failure or {})
    if _delivered(state, failure):
        return True

    return state == "failed" and any(
        str(risk.failure_kind) == (failure or {}).get("failure_kind") for risk in prediction.risks
    )


def _delivered(state: Any, failure: Mapping[str, Any] | None) -> bool:
    # A warning status counts as delivered; the ledger keeps the warning in ``failure``.
    return state == "delivered" and (failure is None or failure.get("failure_kind") == "dimse-warning")


def _same_failure(predicted: PredictedFailure, observed: Mapping[str, Any]) -> bool:
    if str(predicted.failure_kind) != observed.get("failure_kind"):
        return False
    if predicted.hop != observed.get("hop"):
        return False
    detail = observed.get("detail") or {}
    for name in _DETAIL_KEYS:
        if name in predicted.detail and predicted.detail[name] != detail.get(name):
            return False

    return True


def _prediction_key(prediction: InstancePrediction) -> Key:
    route = prediction.route
    return (route.source, route.destination, prediction.source_file,
            prediction.sop_class_uid, prediction.transfer_syntax_uid)


def _row_key(row: Mapping[str, Any]) -> Key:
    return (str(row.get("source")), str(row.get("destination")), row.get("source_file"),
            str(row.get("sop_class_uid")), str(row.get("transfer_syntax_uid")))


def _predicted_summary(prediction: InstancePrediction) -> dict[str, Any]:
    failure = prediction.failure
    return {
        "outcome": str(prediction.outcome),
        "failure_kind": None if failure is None else str(failure.failure_kind),
        "hop": None if failure is None else failure.hop,
        "reason": None if failure is None else failure.reason,
        "risks": [str(risk.failure_kind) for risk in prediction.risks],
    }


def _observed_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    failure = row.get("failure") or {}
    return {
        "outcome": row.get("state"),
        "failure_kind": failure.get("failure_kind"),
        "hop": failure.get("hop"),
        "reason": failure.get("reason"),
    }


def _text(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "nothing"
    text = str(summary.get("outcome"))
    if summary.get("failure_kind"):
        text += f" ({summary['failure_kind']} on {summary.get('hop')}: {summary.get('reason')})"
    if summary.get("risks"):
        text += f" at risk of {', '.join(summary['risks'])}"

    return text
