"""Write a probe result as a node declaration, and read it back.

The file is the body of one node under a topology's ``nodes:`` mapping
(kind ``external``), so it can be pasted into a topology under a node
name. A comment line ``# rehearse-probe: {...}`` carries, as JSON, what the
declaration cannot hold: which SOP classes and transfer syntaxes were
probed, the implementation class UID and version name, and the results of
the AE title checks. ``rehearse check --against`` reads it to tell "not
accepted" from "not probed".
"""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from simulator.capability.errors import CheckError
from simulator.capability.probe import PROBE_TRANSFER_SYNTAXES, ProbeResult
from simulator.conformance.names import describe_uid, resolve_sop_class
from simulator.topology.model import ExternalNode
from simulator.yamlfile import read_yaml

META_PREFIX = "# rehearse-probe: "


@dataclass(frozen=True)
class ProbeFile:
    """A probed system as a node declaration, with what was probed."""

    node: ExternalNode
    probed_sop_classes: frozenset[str]
    probed_transfer_syntaxes: frozenset[str]
    meta: dict[str, Any]


def probe_declaration(result: ProbeResult) -> CommentedMap:
    """Return the node declaration of a probed system, ready to dump as YAML."""
    options = result.options
    node = CommentedMap()
    node["kind"] = "external"
    node["ae_title"] = options.called_ae
    node["host"] = options.host
    node["port"] = options.port
    node["max_pdu"] = result.max_pdu if result.max_pdu is not None else 16382
    node["check_called_ae"] = result.checks_called_ae is not False
    if result.checks_calling_ae:
        node["accept_calling_ae"] = _flow([options.calling_ae])
        node.yaml_add_eol_comment(
            "hint: a bogus calling AE title was rejected; only this accepted one is known",
            "accept_calling_ae",
        )
    node["sop_classes"] = _sop_classes(result)

    return node


def _sop_classes(result: ProbeResult) -> CommentedSeq:
    entries = CommentedSeq()
    classes = list(dict.fromkeys([*result.accepted, *result.scu_role]))
    order = {ts: index for index, ts in enumerate(PROBE_TRANSFER_SYNTAXES)}
    for sop_class in classes:
        syntaxes = set(result.accepted.get(sop_class, ())) | set(result.scu_role.get(sop_class, ()))
        roles = [role for role, table in (("scu", result.scu_role), ("scp", result.accepted))
                 if sop_class in table]
        entry = CommentedMap()
        entry["sop_class"] = describe_uid(sop_class)
        entry["transfer_syntaxes"] = _flow([describe_uid(ts) for ts in
                                            sorted(syntaxes, key=lambda t: order.get(t, 99))])
        entry["roles"] = _flow(roles)
        entries.append(entry)

    return entries


def _flow(values: list[str]) -> CommentedSeq:
    seq = CommentedSeq(values)
    seq.fa.set_flow_style()

    return seq


def probe_meta(result: ProbeResult) -> dict[str, Any]:
    options = result.options
    return {
        "probed_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "calling_ae": options.calling_ae,
        "probed_sop_classes": result.probed_sop_classes,
        "probed_transfer_syntaxes": list(PROBE_TRANSFER_SYNTAXES),
        "implementation_class_uid": result.implementation_class_uid,
        "implementation_version_name": result.implementation_version_name,
        "called_ae_rejection": _rejection(result.called_ae_check),
        "calling_ae_rejection": _rejection(result.calling_ae_check),
        "checks_called_ae": result.checks_called_ae,
        "checks_calling_ae": result.checks_calling_ae,
        "associations": result.associations,
    }


def _rejection(answer: Any) -> dict[str, Any] | None:
    return None if answer is None else answer.rejection


def render_probe_yaml(result: ProbeResult) -> str:
    """Return the YAML text: explanatory comments, the meta line and the declaration."""
    meta = probe_meta(result)
    implementation = (f"{meta['implementation_class_uid']} "
                      f"({meta['implementation_version_name'] or 'no version name'})")
    origin = (f"# {result.options.host}:{result.options.port} as probed by rehearse probe on "
              f"{meta['probed_at']}, calling AE {result.options.calling_ae}.")
    header = [
        origin,
        f"# Implementation class UID {implementation}.",
        "# Paste under `nodes:` of a topology with a node name, or compare it with a",
        "# declared node: rehearse check TOPOLOGY --against THIS_FILE --node NAME",
        META_PREFIX + json.dumps(meta, separators=(",", ":")),
    ]
    stream = io.StringIO()
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 100
    yaml.dump(probe_declaration(result), stream)

    return "\n".join(header) + "\n" + stream.getvalue()


def load_probe_file(path: Path) -> ProbeFile:
    """Read a file written by ``rehearse probe``; raise CheckError naming the file and problem."""
    document = read_yaml(path)
    if not isinstance(document, dict):
        raise CheckError(f"{path}: not a node declaration; give a file written by rehearse probe")
    meta = _read_meta(path)
    plain = json.loads(json.dumps(document))  # ruamel's commented containers to dict and list
    try:
        node = ExternalNode.model_validate({"name": "probed", **plain})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CheckError(f"{path}: {where}: {first['msg']}; give a file written by "
                         "rehearse probe") from exc
    classes = meta.get("probed_sop_classes")
    probed = frozenset(resolve_sop_class(c) for c in classes) if classes else frozenset(
        entry.sop_class for entry in node.sop_classes)
    syntaxes = frozenset(meta.get("probed_transfer_syntaxes") or PROBE_TRANSFER_SYNTAXES)

    return ProbeFile(node, probed, syntaxes, meta)


def _read_meta(path: Path) -> dict[str, Any]:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(META_PREFIX):
            try:
                meta = json.loads(line.removeprefix(META_PREFIX))
            except json.JSONDecodeError as exc:
                raise CheckError(f"{path}: the {META_PREFIX.strip()} line is not valid JSON "
                                 f"({exc}); write the file again with rehearse probe") from exc
            return meta if isinstance(meta, dict) else {}

    return {}
