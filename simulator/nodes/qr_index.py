"""The store of a Query/Retrieve SCP: an index of instance headers, and the matching rules.

The index keeps, per stored instance, the header attributes a query can
match or return (read with ``stop_before_pixels``), never the pixel data.
Matching follows PS3.4 C.2.2.2: single value matching (case-insensitive for
PN, which the standard allows), universal matching on an empty value or a
lone ``*``, wildcard matching with ``*`` and ``?`` for the string VRs AE,
CS, LO, LT, PN, SH, ST, UC, UR and UT (C.2.2.2.4), list of UID matching for
UI, and range matching for DA, TM and DT. A multi-valued attribute matches
when any of its values matches.

NOTE: sequence matching and combined date-time range matching of StudyDate
with StudyTime are not supported: a sequence key is treated as universal,
and StudyDate and StudyTime are each matched on their own. A DT range whose
bounds carry a negative UTC offset is split at the wrong hyphen.
"""

from __future__ import annotations

import re
import threading
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import keyword_dict
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900


@dataclass(frozen=True)
class QueryModel:
    """A Query/Retrieve information model: its levels, top first, and its SOP class UIDs."""

    name: str
    label: str
    levels: tuple[str, ...]
    find: str
    move: str
    get: str

    def service_of(self, sop_class_uid: str) -> str | None:
        """Return 'find', 'move' or 'get' for one of this model's SOP classes."""
        for service in ("find", "move", "get"):
            if getattr(self, service) == sop_class_uid:
                return service
        return None


MODELS: dict[str, QueryModel] = {
    "patient": QueryModel(
        "patient", "Patient Root", ("PATIENT", "STUDY", "SERIES", "IMAGE"),
        find="1.2.840.10008.5.1.4.1.2.1.1", move="1.2.840.10008.5.1.4.1.2.1.2",
        get="1.2.840.10008.5.1.4.1.2.1.3",
    ),
    "study": QueryModel(
        "study", "Study Root", ("STUDY", "SERIES", "IMAGE"),
        find="1.2.840.10008.5.1.4.1.2.2.1", move="1.2.840.10008.5.1.4.1.2.2.2",
        get="1.2.840.10008.5.1.4.1.2.2.3",
    ),
}

UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

# Attributes each level keeps from the instance headers: the usual keys of PS3.4 Annex C.
STORED_KEYS = {
    "PATIENT": ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                "PatientBirthTime", "PatientSex"),
    "STUDY": ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
              "StudyDescription", "ReferringPhysicianName"),
    "SERIES": ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
               "SeriesDate", "SeriesTime", "BodyPartExamined"),
    "IMAGE": ("SOPInstanceUID", "SOPClassUID", "InstanceNumber", "ContentDate", "ContentTime",
              "NumberOfFrames"),
}

# Attributes the SCP computes over the entities below a level.
COMPUTED_KEYS = {
    "PATIENT": ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                "NumberOfPatientRelatedInstances"),
    "STUDY": ("ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances"),
    "SERIES": ("NumberOfSeriesRelatedInstances",),
    "IMAGE": (),
}

NON_MATCHING_KEYS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})
"""Identifier attributes that are not keys: the level and the character set."""

RETURN_ONLY_KEYS = frozenset({"RetrieveAETitle", "InstanceAvailability"})
"""Keys the SCP fills in at every level but never matches on."""

_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_NUMBER_VRS = frozenset({"IS", "DS"})


class QueryError(ValueError):
    """An identifier the SCP cannot process; ``status`` is the DIMSE failure status to return."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def levels_of(model: QueryModel) -> dict[str, tuple[str, ...]]:
    """Return the keys of each level of ``model``; in Study Root the study level has the patient's."""
    keys = {level: STORED_KEYS[level] + COMPUTED_KEYS[level] for level in model.levels}
    if "PATIENT" not in model.levels:
        keys["STUDY"] = STORED_KEYS["PATIENT"] + COMPUTED_KEYS["PATIENT"] + keys["STUDY"]

    return keys


def level_of_key(model: QueryModel, keyword: str) -> str | None:
    """Return the level of ``model`` a key belongs to, or None when the model has no such key."""
    for level, keys in levels_of(model).items():
        if keyword in keys:
            return level
    return None


def key_problem(model: QueryModel, level: str, keyword: str) -> str | None:
    """Return why ``keyword`` cannot be a matching key of a query at ``level``, or None."""
    if keyword not in keyword_dict:
        return f"{keyword!r} is not a DICOM attribute keyword"
    key_level = level_of_key(model, keyword)
    if key_level is None:
        known = ", ".join(k for keys in levels_of(model).values() for k in keys)
        return f"{keyword} is not a key of the {model.label} model; keys: {known}"
    if model.levels.index(key_level) > model.levels.index(level):
        hint = "; use ModalitiesInStudy at the STUDY level" if keyword == "Modality" else ""
        return (f"{keyword} is a {key_level}-level key, below the query level {level}; "
                f"set level: {key_level}{hint}")
    return None


@dataclass(frozen=True)
class IndexedInstance:
    """One stored instance as the index keeps it: its file and its header attributes."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size_bytes: int
    attributes: Dataset

    def value(self, keyword: str) -> str:
        return str(self.attributes.get(keyword, "") or "")

    def sort_key(self) -> tuple[str, str, int, str, int, str]:
        return (self.value("PatientID"), self.value("StudyInstanceUID"),
                _number(self.value("SeriesNumber")), self.value("SeriesInstanceUID"),
                _number(self.value("InstanceNumber")), self.sop_instance_uid)


@dataclass(frozen=True)
class Query:
    """A checked identifier: model, level, and its keys by name (names are safe to log, values not)."""

    model: QueryModel
    level: str
    elements: dict[str, DataElement]
    unsupported: tuple[str, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.elements)

    @property
    def matching_keys(self) -> tuple[str, ...]:
        """Names of the keys with a value, which select; the others only ask for a return value."""
        return tuple(name for name, element in self.elements.items()
                     if name not in self.unsupported and name not in RETURN_ONLY_KEYS
                     and not _is_universal(element.value, element.VR))


def parse_query(identifier: Dataset, model: QueryModel, retrieve: bool) -> Query:
    """Check an identifier against ``model`` and return the query; raise QueryError.

    Every level above the query level needs its unique key with one value,
    as the hierarchical search of PS3.4 Annex C requires, and a retrieve
    needs the unique key of its own level.
    """
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in model.levels:
        raise QueryError(STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                         f"QueryRetrieveLevel {level or '(missing)'} is not a level of "
                         f"{model.label} ({', '.join(model.levels)})")
    depth = model.levels.index(level)
    for upper in model.levels[:depth]:
        _require_single(identifier, UNIQUE_KEYS[upper], level)
    if retrieve:
        unique = UNIQUE_KEYS[level]
        if unique not in identifier or _is_universal(identifier[unique].value, "UI"):
            raise QueryError(STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                             f"a retrieve at the {level} level needs {unique}")
    elements = {element.keyword or str(element.tag): element for element in identifier
                if element.keyword not in NON_MATCHING_KEYS}
    allowed = {k for lv in model.levels[:depth + 1] for k in levels_of(model)[lv]}
    # A retrieve selects by unique keys only; other keys in its identifier are ignored.
    selecting = {UNIQUE_KEYS[lv] for lv in model.levels[:depth + 1]} if retrieve else allowed
    unsupported = tuple(name for name, element in elements.items()
                        if name not in RETURN_ONLY_KEYS
                        and (name not in selecting or element.VR == "SQ"))

    return Query(model, level, elements, unsupported)


def _require_single(identifier: Dataset, keyword: str, level: str) -> None:
    value = identifier[keyword].value if keyword in identifier else None
    if _is_universal(value, "UI") or isinstance(value, MultiValue):
        raise QueryError(STATUS_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                         f"a hierarchical query at the {level} level needs one {keyword}")


class InstanceIndex:
    """Thread-safe index of the instances one node stored, by SOP Instance UID."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instances: dict[str, IndexedInstance] = {}

    def add(self, path: Path) -> IndexedInstance:
        """Read the header of a stored file and index it, replacing an earlier copy."""
        header = dcmread(path, stop_before_pixels=True)
        attributes = Dataset()
        wanted = {"SpecificCharacterSet"} | {k for keys in STORED_KEYS.values() for k in keys}
        for keyword in wanted:
            if keyword in header:
                attributes[keyword] = deepcopy(header[keyword])
        entry = IndexedInstance(
            path=path, sop_instance_uid=str(header.SOPInstanceUID),
            sop_class_uid=str(header.get("SOPClassUID", "")),
            transfer_syntax_uid=str(header.file_meta.get("TransferSyntaxUID", "")),
            size_bytes=path.stat().st_size, attributes=attributes,
        )
        with self._lock:
            self._instances[entry.sop_instance_uid] = entry

        return entry

    def __len__(self) -> int:
        with self._lock:
            return len(self._instances)

    def snapshot(self) -> list[IndexedInstance]:
        with self._lock:
            return sorted(self._instances.values(), key=IndexedInstance.sort_key)

    def find(self, query: Query, retrieve_ae_title: str | None = None) -> list[Dataset]:
        """Return one response identifier per entity that matches, in a stable order."""
        return [_response(query, members, retrieve_ae_title)
                for members in self._matching_entities(query)]

    def select(self, query: Query) -> list[IndexedInstance]:
        """Return every instance below the entities that match: what a retrieve sends."""
        return [i for members in self._matching_entities(query) for i in members]

    def _matching_entities(self, query: Query) -> list[list[IndexedInstance]]:
        entities: dict[tuple[str, ...], list[IndexedInstance]] = {}
        depth = query.model.levels.index(query.level)
        chain = [UNIQUE_KEYS[lv] for lv in query.model.levels[:depth + 1]]
        for instance in self.snapshot():
            entities.setdefault(tuple(instance.value(k) for k in chain), []).append(instance)
        selecting = {name: element for name, element in query.elements.items()
                     if name not in query.unsupported and name not in RETURN_ONLY_KEYS}

        return [members for members in entities.values()
                if all(_element_matches(element.value, element.VR, _entity_values(name, members))
                       for name, element in selecting.items())]


def _response(query: Query, members: list[IndexedInstance], retrieve_ae_title: str | None) -> Dataset:
    first = members[0].attributes
    response = Dataset()
    if "SpecificCharacterSet" in first:
        response.SpecificCharacterSet = first.SpecificCharacterSet
    response.QueryRetrieveLevel = query.level
    for name, element in query.elements.items():
        if name in RETURN_ONLY_KEYS:
            _add_return_only(response, name, retrieve_ae_title)
            continue
        supported = name not in query.unsupported
        if supported and name in first:
            response[element.tag] = deepcopy(first[name])
            continue
        computed = _computed(name, members) if supported else None
        if computed is not None:
            setattr(response, name, computed)
            continue
        # A key the SCP does not support is returned with no value.
        response.add_new(element.tag, element.VR, None)

    return response


def _add_return_only(response: Dataset, name: str, retrieve_ae_title: str | None) -> None:
    if name == "RetrieveAETitle":
        response.RetrieveAETitle = retrieve_ae_title or ""
    else:
        response.InstanceAvailability = "ONLINE"


def _computed(keyword: str, members: list[IndexedInstance]) -> str | list[str] | None:
    def distinct(attribute: str) -> list[str]:
        return sorted({m.value(attribute) for m in members if m.value(attribute)})

    if keyword in ("NumberOfPatientRelatedInstances", "NumberOfStudyRelatedInstances",
                   "NumberOfSeriesRelatedInstances"):
        return str(len(members))
    if keyword in ("NumberOfPatientRelatedSeries", "NumberOfStudyRelatedSeries"):
        return str(len(distinct("SeriesInstanceUID")))
    if keyword == "NumberOfPatientRelatedStudies":
        return str(len(distinct("StudyInstanceUID")))
    if keyword == "ModalitiesInStudy":
        return distinct("Modality")
    if keyword == "SOPClassesInStudy":
        return sorted({m.sop_class_uid for m in members})
    return None


def _entity_values(keyword: str, members: list[IndexedInstance]) -> list[str]:
    computed = _computed(keyword, members)
    if computed is not None:
        return [computed] if isinstance(computed, str) else computed
    attributes = members[0].attributes
    value = attributes[keyword].value if keyword in attributes else None
    if value is None or value == "":
        return []
    values = list(value) if isinstance(value, MultiValue | list) else [value]

    return [str(v) for v in values if str(v) != ""]


def _is_universal(value: object, vr: str) -> bool:
    texts = _request_texts(value)
    if not texts:
        return True
    return vr in _WILDCARD_VRS and all(t == "*" for t in texts)


def _request_texts(value: object) -> list[str]:
    if value is None:
        return []
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]

    return [str(v).rstrip(" ") for v in values if str(v).strip(" ") != ""]


def _element_matches(request: object, vr: str, stored: list[str]) -> bool:
    """Match one key of the request against the values an entity has."""
    if _is_universal(request, vr):
        return True
    if not stored:
        return False
    # More than one value in a request is a UID list; for other VRs the values
    # are read as alternatives, as many archives do.
    return any(_value_matches(text, vr, value)
               for text in _request_texts(request) for value in stored)


def _value_matches(text: str, vr: str, value: str) -> bool:
    value = value.rstrip(" ")
    if vr in _RANGE_VRS and "-" in text:
        return _in_range(text, vr, value)
    if vr in _WILDCARD_VRS and ("*" in text or "?" in text):
        flags = re.IGNORECASE if vr == "PN" else 0
        return re.fullmatch(_wildcard_pattern(text), value, flags | re.DOTALL) is not None
    if vr == "PN":
        return text.casefold() == value.casefold()
    if vr in _NUMBER_VRS:
        return _same_number(text, value)
    if vr in _RANGE_VRS:
        return _normal_time(text, vr) == _normal_time(value, vr)

    return text.strip(" ") == value.strip(" ")


def _wildcard_pattern(text: str) -> str:
    """Return the regular expression for a wildcard value: ``*`` is any run, ``?`` one character."""
    parts = []
    for character in text:
        if character == "*":
            parts.append(".*")
        elif character == "?":
            parts.append(".")
        else:
            parts.append(re.escape(character))

    return "".join(parts)


def _in_range(text: str, vr: str, value: str) -> bool:
    """Range matching: each bound is compared at its own precision, both inclusive."""
    low, _, high = (_normal_time(part, vr) for part in text.partition("-"))
    candidate = _normal_time(value, vr)
    if low and candidate[:len(low)] < low:
        return False

    return not high or candidate[:len(high)] <= high


def _normal_time(text: str, vr: str) -> str:
    # ACR-NEMA style values ("1997.04.24", "10:30:00") still appear in archives.
    text = text.strip(" ")
    return text.replace(".", "") if vr == "DA" else text.replace(":", "")


def _same_number(text: str, value: str) -> bool:
    try:
        return float(text) == float(value)
    except ValueError:
        return text.strip(" ") == value.strip(" ")


def _number(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        return 0
