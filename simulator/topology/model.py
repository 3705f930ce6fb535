"""The topology: nodes with their declared conformance, and the links between them.

A node's behaviour follows only from its declaration, as a real product's
follows from its configuration: a PACS accepts exactly the (SOP class,
transfer syntax) pairs it declares, checks AE titles when told to, and
rejects the association past ``max_associations``.
"""

from __future__ import annotations

import difflib
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydicom.datadict import keyword_dict

from simulator.conformance.names import (
    UnknownNameError,
    resolve_sop_class,
    resolve_transfer_syntax,
)
from simulator.links.faults import FaultSpec, fault_problems
from simulator.links.firewall import FirewallSpec
from simulator.live.settings import DEFAULT_BUFFER_EVENTS, parse_mqtt_url
from simulator.toxiproxy.settings import parse_toxiproxy_url

MIN_MAX_PDU = 16
"""A P-DATA-TF needs 6 bytes of PDV header and some data; pynetdicom needs 8 and more."""

DEFAULT_TRANSFER_SYNTAXES = ("ExplicitVRLittleEndian", "ImplicitVRLittleEndian")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    # PS3.5 AE VR: 16 characters at most, no backslash or control characters,
    # leading and trailing spaces not significant.
    stripped = value.strip()
    if not stripped:
        raise ValueError("an AE title cannot be empty or only spaces")
    if len(value) > 16:
        raise ValueError(f"AE title {value!r} is {len(value)} characters long; the maximum is 16")
    if "\\" in value or any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        raise ValueError(
            f"AE title {value!r} has a backslash or a non-printable or non-ASCII character"
        )

    return stripped


def _resolve_sop_class_name(value: str) -> str:
    try:
        return resolve_sop_class(value)
    except UnknownNameError as exc:
        raise ValueError(str(exc)) from exc


def _resolve_transfer_syntax_name(value: str) -> str:
    try:
        return resolve_transfer_syntax(value)
    except UnknownNameError as exc:
        raise ValueError(str(exc)) from exc


def _check_keyword(value: str) -> str:
    if value not in keyword_dict:
        close = difflib.get_close_matches(value, list(keyword_dict), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"{value!r} is not a DICOM attribute keyword{hint}")
    return value


# Validating each list item on its own makes pydantic report the item's index,
# so an error points at the line of the bad item.
AETitle = Annotated[str, AfterValidator(_check_ae_title)]
SopClassName = Annotated[str, AfterValidator(_resolve_sop_class_name)]
TransferSyntaxName = Annotated[str, AfterValidator(_resolve_transfer_syntax_name)]
AttributeKeyword = Annotated[str, AfterValidator(_check_keyword)]


class Role(StrEnum):
    SCU = "scu"
    SCP = "scp"


class NodeKind(StrEnum):
    MODALITY = "modality"
    ROUTER = "router"
    PACS = "pacs"
    VIEWER = "viewer"
    EXTERNAL = "external"


class Timeouts(_Strict):
    """Timeouts in seconds, as pynetdicom names them; null means wait forever."""

    acse_s: float | None = Field(30.0, ge=0, description="Waiting for A-ASSOCIATE/A-RELEASE responses.")
    dimse_s: float | None = Field(30.0, ge=0, description="Waiting for a DIMSE message.")
    network_s: float | None = Field(
        60.0, ge=0, description="Idle time on an association before it is aborted."
    )
    connection_s: float | None = Field(10.0, ge=0, description="TCP connect.")


class SopClassSupport(_Strict):
    """One SOP class with the transfer syntaxes and roles declared for it."""

    sop_class: SopClassName
    transfer_syntaxes: tuple[TransferSyntaxName, ...] | None = Field(
        None, description="Overrides the node's transfer_syntaxes for this SOP class."
    )
    roles: tuple[Role, ...] = Field(
        (Role.SCU, Role.SCP), description="Roles the node can take for this SOP class."
    )

    @field_validator("transfer_syntaxes")
    @classmethod
    def _unique_transfer_syntaxes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else _unique_transfer_syntax_list(value)


def _unique_transfer_syntax_list(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise ValueError("at least one transfer syntax is needed")

    return tuple(dict.fromkeys(value))


def _sop_class_entry(item: Any) -> Any:
    # A bare string is shorthand for {sop_class: NAME}.
    if isinstance(item, str):
        return {"sop_class": item}
    return item


SopClassEntry = Annotated[
    SopClassSupport,
    BeforeValidator(_sop_class_entry, json_schema_input_type=str | SopClassSupport),
]


class RetryPolicy(_Strict):
    """A router's retry policy for transient failures; a permanent one is never retried."""

    max_attempts: int = Field(3, ge=1, description="Attempts in all, the first one included.")
    initial_backoff_s: float = Field(0.5, ge=0)
    multiplier: float = Field(2.0, ge=1)
    max_backoff_s: float = Field(30.0, ge=0)


class Coercion(_Strict):
    """Attribute changes a router applies before forwarding.

    ``set`` maps a keyword or tag ``(gggg,eeee)`` to a value. ``remove`` lists
    keywords, tags, or ``private:CREATOR`` to drop a whole private block.
    """

    set: dict[str, Any] = Field(default_factory=dict)
    remove: tuple[str, ...] = ()
    reencode_utf8: str | None = Field(
        None,
        description="Re-encode every text value to UTF-8 and write this term in Specific "
        "Character Set (0008,0005). The defined term is 'ISO_IR 192'; routers with a known "
        "bug write 'ISO IR 192', which strict receivers reject.",
    )


class Rule(_Strict):
    """One routing rule: what it matches, where it forwards, what it changes.

    ``match`` keys are ``calling_ae``, ``called_ae``, ``sop_class`` or any
    attribute keyword or tag; a value is a string (shell-style wildcards
    allowed) or a list of strings, any of which may match.
    """

    name: str
    match: dict[str, str | list[str]] = Field(default_factory=dict)
    forward: tuple[str, ...] = Field(..., min_length=1)
    coerce: Coercion = Field(default_factory=Coercion)
    stop: bool = Field(False, description="Evaluate no further rules after this one matches.")


PrivateTagPolicy = Literal["keep", "drop"] | tuple[str, ...]


def _name_not_required(schema: dict[str, Any]) -> None:
    # The loader copies each node's key under `nodes` into `name`, so files omit it.
    required = schema.get("required", [])
    if "name" in required:
        required.remove("name")


class NodeBase(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_name_not_required)

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="The node's key under `nodes`; set by the loader.",
    )
    kind: NodeKind
    ae_title: AETitle
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535)
    max_pdu: int = Field(
        16382, ge=0, le=0xFFFFFFFF,
        description="Maximum PDU length it receives, in bytes; 0 means unlimited. The "
        "Maximum Length item is 4 bytes, and a P-DATA-TF needs at least 16 bytes to carry data.",
    )

    @field_validator("max_pdu")
    @classmethod
    def _usable_max_pdu(cls, value: int) -> int:
        if 0 < value < MIN_MAX_PDU:
            raise ValueError(
                f"max_pdu {value} is too small to carry any data; use 0 (unlimited) or at "
                f"least {MIN_MAX_PDU} (real products use 4096 to 131072)"
            )
        return value
    timeouts: Timeouts = Field(default_factory=Timeouts)
    max_associations: int = Field(10, ge=1)
    accept_calling_ae: tuple[AETitle, ...] | None = Field(
        None, description="Calling AE titles accepted; null accepts any."
    )
    check_called_ae: bool = True
    tls: bool = Field(
        False, description="Speaks DICOM over TLS: an SCP presents a certificate, an SCU starts a TLS handshake."
    )
    transfer_syntaxes: tuple[TransferSyntaxName, ...] = Field(
        DEFAULT_TRANSFER_SYNTAXES, validate_default=True
    )
    sop_classes: tuple[SopClassEntry, ...] = Field(
        (), description="SOP classes, each a keyword or UID, or a mapping with sop_class."
    )

    @field_validator("transfer_syntaxes")
    @classmethod
    def _unique_default_transfer_syntaxes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique_transfer_syntax_list(value)

    @field_validator("sop_classes")
    @classmethod
    def _unique_sop_classes(cls, value: tuple[SopClassSupport, ...]) -> tuple[SopClassSupport, ...]:
        seen: set[str] = set()
        for entry in value:
            if entry.sop_class in seen:
                raise ValueError(f"SOP class {entry.sop_class} is declared twice")
            seen.add(entry.sop_class)
        return value

    def transfer_syntaxes_for(self, sop_class_uid: str) -> tuple[str, ...]:
        """Return the transfer syntaxes declared for a SOP class (empty if unsupported)."""
        for entry in self.sop_classes:
            if entry.sop_class == sop_class_uid:
                return entry.transfer_syntaxes or self.transfer_syntaxes
        return ()

    def supports(self, sop_class_uid: str, role: Role) -> bool:
        return any(e.sop_class == sop_class_uid and role in e.roles for e in self.sop_classes)


class ModalityNode(NodeBase):
    kind: Literal[NodeKind.MODALITY]
    send_to: str | None = Field(
        None, description="Destination node; defaults to the only node a link leads to."
    )


class RouterNode(NodeBase):
    kind: Literal[NodeKind.ROUTER]
    rules: tuple[Rule, ...] = ()
    rule_sets: dict[str, tuple[Rule, ...]] = Field(
        default_factory=dict, description="Named rule sets a scenario can switch between."
    )
    active_rule_set: str | None = Field(
        None, description="Rule set used at start; null uses `rules`."
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    private_tags: PrivateTagPolicy = Field(
        "keep", description="What the router does with private tags: keep, drop, or keep only these creators."
    )
    transcode: bool = Field(
        False,
        description="Converts between uncompressed transfer syntaxes when the destination lacks the source's.",
    )
    max_instances_per_association: int = Field(100, ge=1)

    @field_validator("active_rule_set")
    @classmethod
    def _check_rule_set_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        # rule_sets is declared first, so it is in info.data unless it failed validation.
        rule_sets = info.data.get("rule_sets")
        if value is not None and rule_sets is not None and value not in rule_sets:
            raise ValueError(
                f"active_rule_set {value!r} is not one of the rule_sets "
                f"({', '.join(sorted(rule_sets)) or 'none declared'})"
            )
        return value

    def rule_set(self, name: str | None) -> tuple[Rule, ...]:
        if name is None:
            return self.rules
        return self.rule_sets[name]

    def located_rules(self) -> list[tuple[tuple[str | int, ...], Rule]]:
        """Return every rule of every rule set with its location in the file."""
        located: list[tuple[tuple[str | int, ...], Rule]] = [
            (("rules", i), rule) for i, rule in enumerate(self.rules)
        ]
        for set_name, rule_set in self.rule_sets.items():
            located += [(("rule_sets", set_name, i), rule) for i, rule in enumerate(rule_set)]
        return located


class StorageNode(NodeBase):
    """A PACS or viewer: a Storage SCP that keeps what it receives on disk."""

    kind: Literal[NodeKind.PACS, NodeKind.VIEWER]
    require_attributes: tuple[AttributeKeyword, ...] = Field(
        (),
        description="Keywords that must be present and non-empty; a missing one "
        "gets status 0xA900 (dataset does not match SOP class), as validating archives answer.",
    )
    check_encapsulation: bool = Field(
        False,
        description="Walk the items of encapsulated pixel data as a strict decoder does; an "
        "item of odd length (PS3.5 A.4 requires even) makes the node abort the association.",
    )
    character_set_check: Literal["off", "warning", "reject"] = Field(
        "off",
        description="What the node does with a Specific Character Set value that is not a "
        "PS3.3 defined term: off stores it, warning stores it and answers 0xB007, reject "
        "answers 0xA900.",
    )


class ExternalNode(NodeBase):
    """A real system the simulator does not start: an address and what it declares."""

    kind: Literal[NodeKind.EXTERNAL]
    port: int | None = Field(
        None, ge=1, le=65535,
        description="Where it listens; needed when a link leads to it, not for an SCU that only sends.",
    )


Node = Annotated[
    ModalityNode | RouterNode | StorageNode | ExternalNode, Field(discriminator="kind")
]


class Link(_Strict):
    """A connection path from one node to another, always through a simulator proxy."""

    from_node: str = Field(..., alias="from")
    to_node: str = Field(..., alias="to")
    name: str | None = None
    listen_port: int | None = Field(None, ge=1, le=65535)
    called_ae: AETitle | None = Field(
        None, description="AE title the sender calls; defaults to the receiver's own AE title."
    )
    faults: tuple[FaultSpec, ...] = Field(
        (), description="Faults active from the start: Toxiproxy toxics and DICOM-level faults."
    )
    firewall: FirewallSpec | None = Field(None, description="Firewall-like rules on this link.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("faults")
    @classmethod
    def _check_faults(cls, value: tuple[FaultSpec, ...]) -> tuple[FaultSpec, ...]:
        names = [spec.name for spec in value]
        for spec in value:
            if names.count(spec.name) > 1:
                raise ValueError(f"two faults are named {spec.name!r}; fault names must be unique per link")
            problems = fault_problems(spec)
            if problems:
                raise ValueError(f"fault {spec.name!r}: {'; '.join(problems)}")
        return value

    @property
    def link_name(self) -> str:
        return self.name or f"{self.from_node}->{self.to_node}"


def _check_toxiproxy_url(value: str) -> str:
    parse_toxiproxy_url(value)
    return value


class EventSettings(_Strict):
    """The live event stream: the MQTT broker that gets every event; see docs/live-events.md."""

    mqtt: str | None = Field(
        None, description="Broker URL, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] for TLS. "
        "User name and password come from the command line or the environment, never from here.",
    )
    mqtt_buffer: int = Field(
        DEFAULT_BUFFER_EVENTS, ge=1,
        description="Events kept while the broker is unreachable; past this the oldest are dropped.",
    )

    @model_validator(mode="before")
    @classmethod
    def _check_mqtt_url(cls, data: Any) -> Any:
        # Checked on the whole section, so that the error does not quote the
        # URL as given: it may hold a password, which parse_mqtt_url redacts.
        url = data.get("mqtt") if isinstance(data, dict) else None
        if isinstance(url, str):
            try:
                parse_mqtt_url(url)
            except ValueError as exc:
                raise ValueError(f"mqtt: {exc}") from None
        return data


class FaultBackendSettings(_Strict):
    """The fault backend: the proxy that applies the links' byte-level faults; see docs/toxiproxy.md."""

    backend: Literal["simulator", "toxiproxy"] = Field(
        "simulator", description="simulator: the link proxies; toxiproxy: a Toxiproxy server "
        "behind each link proxy, at url.",
    )
    url: Annotated[str, AfterValidator(_check_toxiproxy_url)] | None = Field(
        None, description="Toxiproxy API, http://HOST[:PORT] (port 8474 by default).",
    )

    @model_validator(mode="after")
    def _url_with_toxiproxy(self) -> FaultBackendSettings:
        if self.backend == "toxiproxy" and self.url is None:
            raise ValueError("backend toxiproxy needs url, such as http://127.0.0.1:8474")
        if self.backend == "simulator" and self.url is not None:
            raise ValueError("url applies only to backend: toxiproxy; remove it")
        return self


class Topology(_Strict):
    """One site: its nodes by name and the links between them."""

    site: str
    description: str = ""
    nodes: dict[str, Node]
    links: tuple[Link, ...] = ()
    events: EventSettings = Field(default_factory=EventSettings)
    faults: FaultBackendSettings = Field(default_factory=FaultBackendSettings)

    @model_validator(mode="before")
    @classmethod
    def _name_nodes(cls, data: Any) -> Any:
        # Nodes are a mapping by name; the name is copied into each node. A name
        # the node gives itself is kept, and _check_names reports it if it differs.
        if isinstance(data, dict) and isinstance(data.get("nodes"), dict):
            nodes = {}
            for name, node in data["nodes"].items():
                if isinstance(node, dict):
                    node = {"name": name, **node}
                nodes[name] = node
            data = {**data, "nodes": nodes}
        return data

    def cross_check(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Return problems between nodes and links as (location, message) pairs.

        These checks need the whole file, so they run after every node and
        link has validated on its own; the loader turns locations into lines.
        """
        return (self._check_names() + self._check_links() + self._check_ports()
                + self._check_routes() + self._check_rule_keys() + self._check_loops())

    def _check_loops(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Reject links from a node to itself and routers that forward in a circle."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for index, link in enumerate(self.links):
            if link.from_node == link.to_node:
                problems.append((("links", index, "to"),
                                 f"link {link.link_name} leads from {link.from_node} to itself"))
        forwards = {
            name: {t for _, rule in node.located_rules() for t in rule.forward
                   if isinstance(self.nodes.get(t), RouterNode)}
            for name, node in self.nodes.items() if isinstance(node, RouterNode)
        }
        for start in forwards:
            path = _router_cycle(start, forwards)
            if path is not None and path[0] == min(path[:-1]):
                problems.append((("nodes", start, "rules"),
                                 f"routers forward in a circle: {' -> '.join(path)}; an instance "
                                 "would go round for ever, so break the circle in the rules"))
        return problems

    def _check_names(self) -> list[tuple[tuple[str | int, ...], str]]:
        return [
            (("nodes", key, "name"), f"node {key} has name {node.name!r}; a node's name is its "
             "key under nodes, so remove name or make it equal to the key")
            for key, node in self.nodes.items()
            if node.name != key
        ]

    def _check_links(self) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        seen: set[str] = set()
        for index, link in enumerate(self.links):
            for field, end in (("from", link.from_node), ("to", link.to_node)):
                if end not in self.nodes:
                    problems.append((
                        ("links", index, field),
                        f"link {link.link_name} names node {end!r}, which does not exist "
                        f"(nodes: {', '.join(sorted(self.nodes))})",
                    ))
            if link.link_name in seen:
                problems.append((("links", index), f"link {link.link_name} is declared twice"))
            seen.add(link.link_name)
            target = self.nodes.get(link.to_node)
            if target is not None and target.kind == NodeKind.MODALITY:
                problems.append((
                    ("links", index, "to"),
                    f"link {link.link_name} leads to modality {link.to_node!r}, which "
                    "accepts no associations in this simulator",
                ))
        for index, link in enumerate(self.links):
            target = self.nodes.get(link.to_node)
            if isinstance(target, ExternalNode) and target.port is None:
                problems.append((
                    ("links", index, "to"),
                    f"link {link.link_name} leads to external node {link.to_node}, which has no "
                    "port; give the port it listens on",
                ))
        return problems

    def _check_ports(self) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        used: dict[int, str] = {}
        owners: list[tuple[int, str, tuple[str | int, ...]]] = [
            (n.port, f"node {n.name}", ("nodes", n.name, "port"))
            for n in self.nodes.values()
            if n.port is not None and n.kind != NodeKind.EXTERNAL
        ]
        owners += [
            (lk.listen_port, f"link {lk.link_name}", ("links", i, "listen_port"))
            for i, lk in enumerate(self.links)
            if lk.listen_port is not None
        ]
        for port, owner, loc in owners:
            if port in used:
                problems.append((loc, f"{owner} and {used[port]} both use port {port}"))
            used[port] = owner
        return problems

    def _check_routes(self) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for node in self.nodes.values():
            targets = self.link_targets(node.name)
            if isinstance(node, ModalityNode):
                if node.send_to is not None and node.send_to not in targets:
                    problems.append((
                        ("nodes", node.name, "send_to"),
                        f"modality {node.name} sends to {node.send_to!r}, but no link "
                        f"goes from {node.name} to {node.send_to!r}",
                    ))
                elif node.send_to is None and not targets:
                    problems.append((
                        ("nodes", node.name),
                        f"modality {node.name} has no outgoing link; add a link "
                        f"from {node.name} to the node it sends to",
                    ))
                elif node.send_to is None and len(targets) > 1:
                    problems.append((
                        ("nodes", node.name),
                        f"modality {node.name} has {len(targets)} outgoing links (to "
                        f"{', '.join(targets)}); set send_to to choose its destination",
                    ))
            if isinstance(node, RouterNode):
                for loc, rule in node.located_rules():
                    for index, dest in enumerate(rule.forward):
                        if dest not in targets:
                            problems.append((
                                ("nodes", node.name, *loc, "forward", index),
                                f"router {node.name} rule {rule.name!r} forwards to "
                                f"{dest!r}, but no link goes from {node.name} to {dest!r}",
                            ))
        return problems

    def _check_rule_keys(self) -> list[tuple[tuple[str | int, ...], str]]:
        # routing imports this module, so the import waits until the check runs.
        from simulator.routing import rule_key_problems

        problems: list[tuple[tuple[str | int, ...], str]] = []
        for node in self.nodes.values():
            if not isinstance(node, RouterNode):
                continue
            for loc, rule in node.located_rules():
                problems += [
                    (("nodes", node.name, *loc, *where), f"rule {rule.name!r}: {message}")
                    for where, message in rule_key_problems(rule)
                ]
        return problems

    def link_targets(self, node_name: str) -> list[str]:
        # A link declared twice is reported once, by _check_links.
        return list(dict.fromkeys(lk.to_node for lk in self.links if lk.from_node == node_name))

    def link_between(self, from_node: str, to_node: str) -> Link:
        for link in self.links:
            if link.from_node == from_node and link.to_node == to_node:
                return link
        raise KeyError(f"no link from {from_node} to {to_node}")

    def destination_of(self, modality: ModalityNode) -> str:
        return modality.send_to or self.link_targets(modality.name)[0]


def _router_cycle(start: str, forwards: dict[str, set[str]]) -> list[str] | None:
    """Return a circle of router forwards that passes through ``start``, or None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    while stack:
        node, path = stack.pop()
        for target in sorted(forwards.get(node, ())):
            if target == start:
                return [*path, start]
            if target not in path:
                stack.append((target, [*path, target]))
    return None
