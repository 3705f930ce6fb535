"""Grouping of corpus instances into the units a modality sends together."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from simulator.corpus.index import CorpusInstance
from simulator.errors import CorpusError

GROUP_KEYS = ("study", "series", "instance")
"""Values of ``by`` other than a chunk size."""

_KeyFunction = Callable[[CorpusInstance], Hashable]


def group_instances(
    instances: Sequence[CorpusInstance], by: str | int
) -> list[list[CorpusInstance]]:
    """Split ``instances`` into groups by study, by series, one per instance, or in chunks of N.

    Groups come in the order of their first instance, and instances keep
    their order inside a group. A series is identified by its Study and
    Series Instance UIDs together. Instances without a Study (or Series)
    Instance UID share one group keyed by the empty string.
    """
    if isinstance(by, bool) or not isinstance(by, (str, int)):
        raise CorpusError(_bad_group_message(by))
    if isinstance(by, int):
        return _chunks(instances, by)
    if by == "instance":
        return [[instance] for instance in instances]
    if by == "study":
        return _group_by_key(instances, lambda i: i.study_instance_uid)
    if by == "series":
        return _group_by_key(instances, lambda i: (i.study_instance_uid, i.series_instance_uid))

    raise CorpusError(_bad_group_message(by))


def _chunks(instances: Sequence[CorpusInstance], size: int) -> list[list[CorpusInstance]]:
    if size < 1:
        raise CorpusError(_bad_group_message(size))

    return [list(instances[start : start + size]) for start in range(0, len(instances), size)]


def _group_by_key(
    instances: Sequence[CorpusInstance], key: _KeyFunction
) -> list[list[CorpusInstance]]:
    groups: dict[Hashable, list[CorpusInstance]] = {}
    for instance in instances:
        groups.setdefault(key(instance), []).append(instance)

    return list(groups.values())


def _bad_group_message(by: object) -> str:
    return (
        f"invalid grouping {by!r}: use one of {', '.join(GROUP_KEYS)} "
        "or a whole number of instances per group, 1 or more"
    )
