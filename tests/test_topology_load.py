"""Tests of loading topology files: each problem names the file, line, field and what is allowed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulator.cli import EXIT_INVALID_INPUT, EXIT_OK, app
from simulator.errors import ConfigError
from simulator.routing import check_rule_keys
from simulator.topology import Coercion, RouterNode, load_topology

REPO = Path(__file__).resolve().parent.parent
BUNDLED_TOPOLOGIES = sorted((REPO / "topologies").glob("*.yaml"))

MINIMAL = """\
site: test
nodes:
  ct:
    kind: modality
    ae_title: CT
  pacs:
    kind: pacs
    ae_title: PACS
links:
  - {from: ct, to: pacs}
"""

ROUTED = """\
site: test
nodes:
  ct:
    kind: modality
    ae_title: CT
  router:
    kind: router
    ae_title: ROUTER
    rules:
      - name: all
        forward: [pacs]
{rule}
  pacs:
    kind: pacs
    ae_title: PACS
links:
  - {{from: ct, to: router}}
  - {{from: router, to: pacs}}
"""


def write(tmp_path: Path, text: str, name: str = "topology.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_topology(path)
    return caught.value


def problem_at(error: ConfigError, line: int, field: str) -> str:
    """Return the one problem reported at ``line`` for ``field``, failing if there is none."""
    prefix = f"line {line}: {field}: "
    found = [p for p in error.problems if p.startswith(prefix)]
    assert len(found) == 1, f"no single problem starting {prefix!r} in {error.problems}"
    return found[0]


def in_ct(*lines: str) -> str:
    """Return MINIMAL with ``lines`` added to the ct node, after its ae_title line (line 5)."""
    return MINIMAL.replace(
        "ae_title: CT\n", "ae_title: CT\n" + "".join(f"    {x}\n" for x in lines)
    )


def in_pacs(*lines: str) -> str:
    """Return MINIMAL with ``lines`` added to the pacs node, after its ae_title line (line 8)."""
    return MINIMAL.replace(
        "ae_title: PACS\n", "ae_title: PACS\n" + "".join(f"    {x}\n" for x in lines)
    )


def routed(rule: str) -> str:
    """Return the ROUTED topology with ``rule`` lines added under the router's first rule."""
    return ROUTED.format(rule=textwrap.indent(textwrap.dedent(rule), " " * 8).rstrip("\n"))


# (case id, file text, line, dotted field path, phrase the message must contain)
BAD_TOPOLOGIES = [
    (
        "invalid SOP class UID",
        in_ct("sop_classes: [1.2.840.01.5]"),
        6, "nodes.ct.sop_classes[0].sop_class", "invalid UID '1.2.840.01.5'",
    ),
    (
        "UID of a transfer syntax as SOP class",
        in_ct("sop_classes:", "  - 1.2.840.10008.1.2.1"),
        7, "nodes.ct.sop_classes[0].sop_class", "not a SOP class",
    ),
    (
        "unknown SOP class keyword",
        in_ct("sop_classes:", "  - CTImageStorag"),
        7, "nodes.ct.sop_classes[0].sop_class", "did you mean CTImageStorage",
    ),
    (
        "unknown transfer syntax in multi-line flow list",
        in_pacs(
            "transfer_syntaxes: [ExplicitVRLittleEndian,",
            "                    JPEG2000Loseless]",
        ),
        10, "nodes.pacs.transfer_syntaxes[1]", "did you mean JPEG2000Lossless",
    ),
    (
        "unknown transfer syntax in a SOP class entry",
        in_ct(
            "sop_classes:",
            "  - sop_class: CTImageStorage",
            "    transfer_syntaxes:",
            "      - ExplicitVRLittleEndian",
            "      - Foo",
        ),
        10, "nodes.ct.sop_classes[0].transfer_syntaxes[1]", "unknown transfer syntax 'Foo'",
    ),
    (
        "empty transfer syntax list",
        in_pacs("transfer_syntaxes: []"),
        9, "nodes.pacs.transfer_syntaxes", "at least one transfer syntax",
    ),
    (
        "negative timeout",
        in_ct("timeouts: {acse_s: 5, dimse_s: -1}"),
        6, "nodes.ct.timeouts.dimse_s", "greater than or equal to 0",
    ),
    (
        "AE title longer than 16 characters",
        MINIMAL.replace("ae_title: PACS", "ae_title: PACS_IN_BUILDING_C"),
        8, "nodes.pacs.ae_title", "the maximum is 16",
    ),
    (
        "AE title with a backslash",
        MINIMAL.replace("ae_title: PACS", "ae_title: 'PA\\CS'"),
        8, "nodes.pacs.ae_title", "backslash",
    ),
    (
        "calling AE title list item too long",
        in_pacs("accept_calling_ae:", "  - CT", "  - CT_SCANNER_IN_ROOM_4"),
        11, "nodes.pacs.accept_calling_ae[1]", "the maximum is 16",
    ),
    (
        "port out of range on a pacs node",
        in_pacs("port: 70000"),
        9, "nodes.pacs.port", "less than or equal to 65535",
    ),
    (
        "max_pdu negative on a viewer node",
        in_pacs("max_pdu: -5").replace("kind: pacs", "kind: viewer"),
        9, "nodes.pacs.max_pdu", "greater than or equal to 0",
    ),
    (
        "unknown field in a pacs node",
        in_pacs("max_asociations: 4"),
        9, "nodes.pacs.max_asociations", "did you mean 'max_associations'",
    ),
    (
        "unknown field in a router rule",
        routed("fowrard: [pacs]\n"),
        12, "nodes.router.rules[0].fowrard", "unknown field 'fowrard'",
    ),
    (
        "unknown node kind",
        MINIMAL.replace("kind: pacs", "kind: pax"),
        7, "nodes.pacs.kind", "use one of: modality, router, pacs, viewer, external",
    ),
    (
        "missing node kind",
        MINIMAL.replace("    kind: pacs\n", ""),
        6, "nodes.pacs.kind", "missing kind; give one of: modality, router, pacs",
    ),
    (
        "node that is not a mapping",
        MINIMAL.replace("  pacs:\n    kind: pacs\n    ae_title: PACS\n", "  pacs: 5\n"),
        6, "nodes.pacs", "should be a mapping",
    ),
    (
        "node name that differs from its key",
        in_pacs("name: archive"),
        9, "nodes.pacs.name", "a node's name is its key under nodes",
    ),
    (
        "node key with a space",
        MINIMAL.replace("  pacs:", "  old pacs:").replace("to: pacs", "to: old pacs"),
        6, "nodes.old pacs.name", "should match pattern",
    ),
    (
        "external node without a port",
        MINIMAL.replace("kind: pacs", "kind: external").replace("    port: 11112\n", ""),
        10, "links[0].to", "leads to external node pacs, which has no port",
    ),
    (
        "unknown required attribute keyword",
        in_pacs("require_attributes: [PatientID, AccessionNumbr]"),
        9, "nodes.pacs.require_attributes[1]", "did you mean AccessionNumber",
    ),
    (
        "private_tags neither keep, drop nor a list",
        routed("").replace("    rules:\n", "    private_tags: 5\n    rules:\n"),
        9, "nodes.router.private_tags", "'keep' or 'drop' or a list",
    ),
    (
        "match value neither string nor list",
        routed("match: {Modality: 5}\n"),
        12, "nodes.router.rules[0].match.Modality", "a valid string or a list",
    ),
    (
        "unknown active rule set",
        routed("").replace("    rules:\n", "    active_rule_set: go-live\n    rules:\n"),
        9, "nodes.router.active_rule_set", "not one of the rule_sets (none declared)",
    ),
    (
        "link to a node that does not exist",
        MINIMAL + "  - {from: pacs, to: viewer}\n",
        11, "links[1].to", "names node 'viewer', which does not exist (nodes: ct, pacs)",
    ),
    (
        "link to a modality",
        MINIMAL + "  - {from: pacs, to: ct}\n",
        11, "links[1].to", "leads to modality 'ct'",
    ),
    (
        "link declared twice",
        MINIMAL + "  - {from: ct, to: pacs}\n",
        11, "links[1]", "declared twice",
    ),
    (
        "unknown field in a link",
        MINIMAL.replace("to: pacs}", "to: pacs, port: 4242}"),
        10, "links[0].port", "allowed fields: from, to, name, listen_port, called_ae",
    ),
    (
        "two nodes with one port",
        in_ct("port: 11112").replace("ae_title: PACS\n", "ae_title: PACS\n    port: 11112\n"),
        10, "nodes.pacs.port", "node pacs and node ct both use port 11112",
    ),
    (
        "link listen port taken by a node",
        in_pacs("port: 11112").replace("to: pacs}", "to: pacs, listen_port: 11112}"),
        11, "links[0].listen_port", "both use port 11112",
    ),
    (
        "modality with several outgoing links and no send_to",
        MINIMAL.replace("links:\n", "  viewer:\n    kind: viewer\n    ae_title: VIEWER\nlinks:\n")
        + "  - {from: ct, to: viewer}\n",
        3, "nodes.ct", "2 outgoing links (to pacs, viewer); set send_to",
    ),
    (
        "modality with no outgoing link",
        MINIMAL.replace("links:\n  - {from: ct, to: pacs}\n", ""),
        3, "nodes.ct", "no outgoing link; add a link from ct",
    ),
    (
        "modality send_to without a link",
        in_ct("send_to: archive"),
        6, "nodes.ct.send_to", "no link goes from ct to 'archive'",
    ),
    (
        "router rule forwarding to a node without a link",
        routed("").replace("forward: [pacs]", "forward: [pacs, viewer]"),
        11, "nodes.router.rules[0].forward[1]", "no link goes from router to 'viewer'",
    ),
    (
        "rule set rule forwarding to a node without a link",
        routed("").replace(
            "    rules:\n      - name: all\n        forward: [pacs]\n",
            "    rule_sets:\n      legacy:\n        - name: all\n"
            "          forward:\n            - archive\n",
        ),
        13, "nodes.router.rule_sets.legacy[0].forward[0]", "no link goes from router to 'archive'",
    ),
    (
        "invalid match key",
        routed("match: {Modalty: CT}\n"),
        12, "nodes.router.rules[0].match.Modalty", "did you mean Modality",
    ),
    (
        "match key names the routing keys",
        routed("match:\n  calling_ae: CT\n  callingae: CT\n"),
        14, "nodes.router.rules[0].match.callingae", "nor one of called_ae, calling_ae, sop_class",
    ),
    (
        "unknown SOP class in a match",
        routed("match:\n  sop_class: [CTImageStorage, MRImageStorag, '1.2.840.10008.*']\n"),
        13, "nodes.router.rules[0].match.sop_class[1]", "did you mean MRImageStorage",
    ),
    (
        "invalid coerce.set key",
        routed("coerce:\n  set:\n    InstitutionNam: St Example\n"),
        14, "nodes.router.rules[0].coerce.set.InstitutionNam", "did you mean InstitutionName",
    ),
    (
        "coerce.set key outside the dictionary",
        routed("coerce:\n  set:\n    (0009,1001): x\n"),
        14, "nodes.router.rules[0].coerce.set.(0009,1001)", "not in the DICOM dictionary",
    ),
    (
        "invalid coerce.remove entry",
        routed("coerce:\n  remove:\n    - PatientComments\n    - (0010,10x0)\n"),
        15, "nodes.router.rules[0].coerce.remove[1]", "nor private:CREATOR",
    ),
    (
        "coerce.remove private block without creator",
        routed("coerce:\n  remove:\n    - 'private:'\n"),
        14, "nodes.router.rules[0].coerce.remove[0]", "needs the private creator",
    ),
    (
        "unknown field in coerce",
        routed("coerce: {add: {PatientID: x}}\n"),
        12, "nodes.router.rules[0].coerce.add", "allowed fields: set, remove",
    ),
    (
        "missing site",
        MINIMAL.replace("site: test\n", ""),
        1, "site", "Field required",
    ),
    (
        "unknown top-level field",
        MINIMAL.replace("site: test\n", "site: test\nsites: other\n"),
        2, "sites", "did you mean 'site'",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "field", "phrase"),
    [case[1:] for case in BAD_TOPOLOGIES],
    ids=[case[0] for case in BAD_TOPOLOGIES],
)
def test_bad_topology_names_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, phrase: str
) -> None:
    """A bad topology fails with one problem naming the file, line, field and what is allowed."""
    path = write(tmp_path, text)

    error = load_error(path)

    assert error.path == str(path)
    assert phrase in problem_at(error, line, field)
    assert len(error.problems) == 1, error.problems
    assert str(path) in str(error)


def test_unquoted_tag_in_flow_list(tmp_path: Path) -> None:
    """A tag that YAML split at its comma inside [...] gets a hint to quote it, on both halves."""
    path = write(tmp_path, routed("coerce:\n  remove: [PatientComments, (0010,4000)]\n"))

    error = load_error(path)

    hint = "quote tags inside [...] or {...}"
    assert hint in problem_at(error, 13, "nodes.router.rules[0].coerce.remove[1]")
    assert hint in problem_at(error, 13, "nodes.router.rules[0].coerce.remove[2]")


# (case id, file text, line, phrase) for files that are not valid YAML mappings
BAD_YAML = [
    (
        "duplicate node key",
        MINIMAL + "nodes:\n  viewer: {kind: viewer, ae_title: V}\n",
        11, "duplicate key 'nodes' in the mapping that starts at line 1",
    ),
    (
        "duplicate field in a node",
        in_ct("kind: router"),
        6, "duplicate key 'kind' in the mapping that starts at line 4",
    ),
    (
        "unclosed flow mapping",
        MINIMAL.replace("{from: ct, to: pacs}", "{from: ct, to: pacs") + "other: 1\n",
        11, "invalid YAML: ",
    ),
    (
        "tab indentation",
        MINIMAL.replace("    ae_title: PACS", "\tae_title: PACS"),
        8, "found character '\\t' that cannot start any token",
    ),
    ("list at the top level", "- site: test\n", 1, "a topology file must be a YAML mapping"),
    ("empty file", "", 1, "a topology file must be a YAML mapping"),
]


@pytest.mark.parametrize(
    ("text", "line", "phrase"),
    [case[1:] for case in BAD_YAML],
    ids=[case[0] for case in BAD_YAML],
)
def test_bad_yaml_names_line(tmp_path: Path, text: str, line: int, phrase: str) -> None:
    """A file that is not a YAML mapping fails with one problem naming its line."""
    path = write(tmp_path, text)

    error = load_error(path)

    assert error.path == str(path)
    assert len(error.problems) == 1
    assert error.problems[0].startswith(f"line {line}: ")
    assert phrase in error.problems[0]


def test_missing_file_names_path(tmp_path: Path) -> None:
    """A topology path that does not exist fails with ConfigError naming it."""
    path = tmp_path / "absent.yaml"

    error = load_error(path)

    assert error.path == str(path)
    assert "file not found" in error.problems[0]


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    """Problems in several nodes are all listed in one error, in file order of fields."""
    text = MINIMAL.replace("ae_title: CT", "ae_title: CT_SCANNER_IN_ROOM_4").replace(
        "kind: pacs", "kind: pax"
    )
    path = write(tmp_path, text)

    error = load_error(path)

    assert len(error.problems) == 2
    assert error.problems[0].startswith("line 5: nodes.ct.ae_title: ")
    assert error.problems[1].startswith("line 7: nodes.pacs.kind: ")


def test_bad_value_is_shown(tmp_path: Path) -> None:
    """A problem with a scalar value ends with the value as given."""
    path = write(tmp_path, in_ct("max_associations: 0"))

    problem = problem_at(load_error(path), 6, "nodes.ct.max_associations")

    assert problem.endswith("(got 0)")


def test_alias_error_points_at_anchor(tmp_path: Path) -> None:
    """An error in an aliased list points at the anchor's line, under each node's own path."""
    text = in_ct("transfer_syntaxes: &ts [Foo]").replace(
        "ae_title: PACS\n", "ae_title: PACS\n    transfer_syntaxes: *ts\n"
    )
    path = write(tmp_path, text)

    error = load_error(path)

    unknown = "unknown transfer syntax 'Foo'"
    assert unknown in problem_at(error, 6, "nodes.ct.transfer_syntaxes[0]")
    assert unknown in problem_at(error, 6, "nodes.pacs.transfer_syntaxes[0]")


def test_rule_reports_forward_and_key_problems(tmp_path: Path) -> None:
    """A rule with a bad forward and a bad match key reports both problems."""
    text = routed("match: {Modalty: CT}\n").replace("forward: [pacs]", "forward: [viewer]")
    path = write(tmp_path, text)

    error = load_error(path)

    assert "no link goes from router" in problem_at(error, 11, "nodes.router.rules[0].forward[0]")
    assert "rule 'all'" in problem_at(error, 12, "nodes.router.rules[0].match.Modalty")


def test_valid_rule_keys_load(tmp_path: Path) -> None:
    """Keywords, tags, routing keys and private creators are accepted as rule keys."""
    rule = """\
    match:
      calling_ae: CT*
      sop_class: [CTImageStorage]
      (0008,0060): CT
      StationName: [A, B]
    coerce:
      set: {InstitutionName: St Example, '(0008,1010)': ST1}
      remove: [PatientComments, '(0010,4000)', 'private:ACME 1.0']
    """
    path = write(tmp_path, routed(rule))

    topology = load_topology(path)

    router = topology.nodes["router"]
    assert isinstance(router, RouterNode)
    assert check_rule_keys(router.rules[0]) == []


def test_check_rule_keys_message_format(tmp_path: Path) -> None:
    """check_rule_keys names the part of the rule that holds each bad key."""
    path = write(tmp_path, routed(""))
    router = load_topology(path).nodes["router"]
    assert isinstance(router, RouterNode)
    rule = router.rules[0].model_copy(update={"match": {"Modalty": "CT"}})

    messages = check_rule_keys(rule)

    assert len(messages) == 1
    assert messages[0].startswith("match: 'Modalty' is neither a DICOM keyword")


def test_check_rule_keys_names_coerce_part(tmp_path: Path) -> None:
    """check_rule_keys prefixes coerce problems with coerce.set or coerce.remove."""
    path = write(tmp_path, routed(""))
    router = load_topology(path).nodes["router"]
    assert isinstance(router, RouterNode)
    coerce = {"set": {"PatientNam": "x"}, "remove": ["private:"]}
    rule = router.rules[0].model_copy(update={"coerce": Coercion.model_validate(coerce)})

    messages = check_rule_keys(rule)

    assert len(messages) == 2
    assert messages[0].startswith("coerce.set: 'PatientNam' is neither")
    assert messages[1].startswith("coerce.remove: 'private:' needs the private creator")


def test_minimal_topology_loads(tmp_path: Path) -> None:
    """The minimal topology of these tests is valid, so each bad case differs by one problem."""
    topology = load_topology(write(tmp_path, MINIMAL))

    assert sorted(topology.nodes) == ["ct", "pacs"]
    assert topology.nodes["ct"].name == "ct"


def test_default_transfer_syntaxes_resolve_to_uids(tmp_path: Path) -> None:
    """A node without transfer_syntaxes gets the default ones as UIDs, not keywords."""
    topology = load_topology(write(tmp_path, MINIMAL))

    assert topology.nodes["pacs"].transfer_syntaxes == ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


@pytest.mark.parametrize("path", BUNDLED_TOPOLOGIES, ids=lambda p: p.name)
def test_bundled_topology_loads(path: Path) -> None:
    """Every topology shipped in topologies/ loads without a problem."""
    topology = load_topology(path)

    assert topology.nodes
    assert topology.links


def test_bundled_topologies_exist() -> None:
    """The topologies folder holds at least one file, so the loop above tests something."""
    assert BUNDLED_TOPOLOGIES


def schema_output(kind: str) -> dict[str, object]:
    result = CliRunner().invoke(app, ["schema", kind])
    assert result.exit_code == EXIT_OK, result.output
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def test_schema_command_prints_json() -> None:
    """`rehearse schema topology` prints a JSON Schema with the top-level fields."""
    document = schema_output("topology")

    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"site", "nodes", "links"} <= set(document["properties"])  # type: ignore[arg-type]


def test_schema_unknown_kind_exits_2() -> None:
    """`rehearse schema` with an unknown kind exits 2 and lists the kinds."""
    result = CliRunner().invoke(app, ["schema", "nodes"])

    assert result.exit_code == EXIT_INVALID_INPUT
    assert "choose topology or scenario" in result.stderr


@pytest.mark.parametrize("path", BUNDLED_TOPOLOGIES, ids=lambda p: p.name)
def test_schema_accepts_bundled_topology(path: Path) -> None:
    """The printed JSON Schema accepts every bundled topology file."""
    jsonschema = pytest.importorskip("jsonschema")
    from ruamel.yaml import YAML

    document = YAML(typ="safe").load(path)

    jsonschema.validate(document, schema_output("topology"))


def test_validate_command_accepts_bundled_topology() -> None:
    """`rehearse validate` exits 0 for the bundled topology."""
    path = REPO / "topologies" / "hospital-cutover.yaml"

    result = CliRunner().invoke(app, ["validate", str(path)])

    assert result.exit_code == EXIT_OK, result.output
    assert "valid" in result.stdout


def test_validate_command_rejects_bad_topology(tmp_path: Path) -> None:
    """`rehearse validate` exits 2 and prints the file, line and field on stderr."""
    path = write(tmp_path, MINIMAL.replace("kind: pacs", "kind: pax"))

    result = CliRunner().invoke(app, ["validate", str(path)])

    assert result.exit_code == EXIT_INVALID_INPUT
    assert str(path) in result.stderr
    assert "line 7: nodes.pacs.kind: unknown kind 'pax'" in result.stderr
    assert result.stdout == ""
