"""Tests of loading scenario files, alone and checked against a topology."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulator.cli import EXIT_INVALID_INPUT, EXIT_OK, app
from simulator.errors import ConfigError
from simulator.scenario import Scenario, load_scenario
from simulator.topology import Topology, load_topology

REPO = Path(__file__).resolve().parent.parent
BUNDLED_SCENARIOS = sorted((REPO / "scenarios").glob("*.yaml"))
BUNDLED_TOPOLOGIES = sorted((REPO / "topologies").glob("*.yaml"))

TOPOLOGY = """\
site: test
nodes:
  ct: {kind: modality, ae_title: CT}
  mr: {kind: modality, ae_title: MR}
  router:
    kind: router
    ae_title: ROUTER
    active_rule_set: legacy
    rule_sets:
      legacy: [{name: all, forward: [pacs]}]
      go-live: [{name: all, forward: [pacs]}]
  pacs: {kind: pacs, ae_title: PACS}
links:
  - {from: ct, to: router}
  - {from: mr, to: router}
  - {from: router, to: pacs}
"""

MINIMAL = """\
name: test
senders:
  - {modality: ct}
timeline:
  - {action: start_sending, at_s: 0}
expectations:
  - delivered: {source: ct, to: pacs}
"""

CUTOVER_STEP = "{action: cutover, after: {idle: true}, router: router, rule_set: go-live}"


@pytest.fixture
def topology(tmp_path: Path) -> Topology:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY, encoding="utf-8")
    return load_topology(path)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path, topology: Topology | None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_scenario(path, topology)
    return caught.value


def problem_at(error: ConfigError, line: int, field: str) -> str:
    """Return the one problem reported at ``line`` for ``field``, failing if there is none."""
    prefix = f"line {line}: {field}: "
    found = [p for p in error.problems if p.startswith(prefix)]
    assert len(found) == 1, f"no single problem starting {prefix!r} in {error.problems}"
    return found[0]


def with_timeline(*steps: str) -> str:
    """Return MINIMAL with its timeline replaced by ``steps``, one flow mapping per line."""
    timeline = "".join(f"  - {step}\n" for step in steps)
    return MINIMAL.replace("  - {action: start_sending, at_s: 0}\n", timeline)


def with_expectation(*lines: str) -> str:
    """Return MINIMAL with its expectation replaced by ``lines`` (the first starts the item)."""
    text = "".join(f"  {'- ' if i == 0 else '  '}{line}\n" for i, line in enumerate(lines))
    return MINIMAL.replace("  - delivered: {source: ct, to: pacs}\n", text)


# (case id, file text, line, dotted field path, phrase); each is wrong on its own,
# without a topology.
BAD_SCENARIOS = [
    ("missing name", MINIMAL.replace("name: test\n", ""), 1, "name", "Field required"),
    (
        "unknown top-level field",
        MINIMAL + "timeout: 60\n",
        8, "timeout", "did you mean 'timeout_s'",
    ),
    (
        "no senders",
        MINIMAL.replace("senders:\n  - {modality: ct}\n", "senders: []\n"),
        2, "senders", "at least 1 item",
    ),
    ("zero timeout", MINIMAL + "timeout_s: 0\n", 8, "timeout_s", "greater than 0"),
    ("zero repeat", MINIMAL + "repeat: 0\n", 8, "repeat", "greater than or equal to 1"),
    (
        "unknown field in a sender",
        MINIMAL.replace("{modality: ct}", "{modality: ct, modalty: mr}"),
        3, "senders[0].modalty", "did you mean 'modality'",
    ),
    (
        "group_by zero",
        MINIMAL.replace("{modality: ct}", "{modality: ct, group_by: 0}"),
        3, "senders[0].group_by", "at least 1",
    ),
    (
        "group_by unknown word",
        MINIMAL.replace("{modality: ct}", "{modality: ct, group_by: patient}"),
        3, "senders[0].group_by", "'study', 'series' or 'instance' or a valid integer",
    ),
    (
        "concurrency zero",
        MINIMAL.replace("{modality: ct}", "{modality: ct, concurrency: 0}"),
        3, "senders[0].concurrency", "greater than or equal to 1",
    ),
    (
        "unknown SOP class in a selection list",
        MINIMAL.replace(
            "  - {modality: ct}\n",
            "  - modality: ct\n    select:\n      sop_class:\n        - CTImageStorage\n"
            "        - MRImageStorag\n",
        ),
        7, "senders[0].select.sop_class[1]", "did you mean MRImageStorage",
    ),
    (
        "invalid SOP class UID in a selection",
        MINIMAL.replace("{modality: ct}", "{modality: ct, select: {sop_class: 1.2.3.04}}"),
        3, "senders[0].select.sop_class[0]", "invalid UID '1.2.3.04'",
    ),
    (
        "unknown step action",
        with_timeline("{action: start, at_s: 0}"),
        5, "timeline[0].action", "'start_sending', 'cutover', 'hold'",
    ),
    (
        "step with at_s and after",
        with_timeline("{action: start_sending, at_s: 0, after: {idle: true}}"),
        5, "timeline[0]", "give at_s or after, not both",
    ),
    (
        "negative at_s",
        with_timeline("{action: start_sending, at_s: -1}"),
        5, "timeline[0].at_s", "greater than or equal to 0",
    ),
    (
        "after with two events",
        with_timeline("{action: start_sending, after: {sent: 5, delivered: 3}}"),
        5, "timeline[0].after", "give exactly one of sent, delivered, idle: true or association_on",
    ),
    (
        "after idle false",
        with_timeline("{action: start_sending, after: {idle: false}}"),
        5, "timeline[0].after", "give exactly one of sent, delivered, idle: true or association_on",
    ),
    (
        "cutover without rule_set",
        with_timeline("{action: cutover, at_s: 5, router: router}"),
        5, "timeline[0]", "a cutover step needs rule_set",
    ),
    (
        "cutover naming senders",
        with_timeline(CUTOVER_STEP.removesuffix("}") + ", senders: [ct]}"),
        5, "timeline[0]", "senders does not apply to cutover steps",
    ),
    (
        "start_sending naming a rule set",
        with_timeline("{action: start_sending, at_s: 0, rule_set: go-live}"),
        5, "timeline[0]", "rule_set does not apply to start_sending steps",
    ),
    (
        "expectation with no check",
        with_expectation("name: nothing to check"),
        7, "expectations[0]", "needs exactly one of delivered, not_delivered, no_failures, failure",
    ),
    (
        "expectation with two checks",
        with_expectation("delivered: {source: ct}", "no_failures: {}"),
        7, "expectations[0]", "needs exactly one of delivered, not_delivered, no_failures, failure",
    ),
    (
        "unknown field in an optional sub-mapping",
        with_timeline("{action: start_sending, after: {idle: true, senders: [ct]}}"),
        5, "timeline[0].after.senders", "allowed fields: sent, delivered, idle",
    ),
    (
        "unknown field in an expectation",
        with_expectation("deliverd: {source: ct}"),
        7, "expectations[0].deliverd", "did you mean 'delivered'",
    ),
    (
        "unknown failure kind",
        with_expectation("failure:", "  kind: no-acepted-context"),
        8, "expectations[0].failure.kind", "'no-accepted-context'",
    ),
    (
        "failure min_count zero",
        with_expectation("failure: {kind: dimse-failure, min_count: 0}"),
        7, "expectations[0].failure.min_count", "greater than or equal to 1",
    ),
    (
        "unknown SOP class in an expectation",
        with_expectation("delivered:", "  to: pacs", "  sop_class: CTImageStorag"),
        9, "expectations[0].delivered.sop_class[0]", "did you mean CTImageStorage",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "field", "phrase"),
    [case[1:] for case in BAD_SCENARIOS],
    ids=[case[0] for case in BAD_SCENARIOS],
)
def test_bad_scenario_names_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, phrase: str
) -> None:
    """A bad scenario fails on its own with a problem naming the file, line and field."""
    path = write(tmp_path, text)

    error = load_error(path, None)

    assert error.path == str(path)
    assert phrase in problem_at(error, line, field)
    assert len(error.problems) == 1, error.problems


# (case id, file text, line, dotted field path, phrase); each is valid on its own
# but does not fit TOPOLOGY.
MISMATCHED_SCENARIOS = [
    (
        "unknown modality",
        MINIMAL.replace("{modality: ct}", "{modality: cr}"),
        3, "senders[0].modality",
        "'cr' is not a modality node of the topology (modalities: ct, mr)",
    ),
    (
        "sender naming a router",
        MINIMAL.replace("{modality: ct}", "{modality: router}"),
        3, "senders[0].modality", "'router' is not a modality node",
    ),
    (
        "two senders with one name",
        MINIMAL.replace("{modality: ct}\n", "{modality: ct}\n  - {modality: mr, name: ct}\n"),
        4, "senders[1]", "senders[0] is already named 'ct'",
    ),
    (
        "unknown sender in a step",
        with_timeline("{action: start_sending, at_s: 0, senders: [ct, us]}"),
        5, "timeline[0].senders[1]", "'us' is not one of the scenario's senders (ct)",
    ),
    (
        "cutover of an unknown router",
        with_timeline(
            "{action: start_sending, at_s: 0}",
            CUTOVER_STEP.replace("router: router", "router: gateway"),
        ),
        6, "timeline[1].router", "'gateway' is not a router node of the topology (routers: router)",
    ),
    (
        "cutover of a PACS",
        with_timeline(CUTOVER_STEP.replace("router: router", "router: pacs")),
        5, "timeline[0].router", "'pacs' is not a router node",
    ),
    (
        "cutover to an unknown rule set",
        with_timeline(CUTOVER_STEP.replace("go-live", "golive")),
        5, "timeline[0].rule_set", "no rule set 'golive' (it has: go-live, legacy)",
    ),
    (
        "delivered to an unknown node",
        with_expectation("delivered: {source: ct, to: new-pacs}"),
        7, "expectations[0].delivered.to",
        "'new-pacs' does not exist in the topology (nodes: ct, mr, pacs, router)",
    ),
    (
        "not delivered from an unknown node",
        with_expectation("not_delivered:", "  source: us"),
        8, "expectations[0].not_delivered.source", "'us' does not exist",
    ),
    (
        "no failures on an unknown link",
        with_expectation("no_failures: {link: ct->pacs}"),
        7, "expectations[0].no_failures.link",
        "'ct->pacs' does not exist (links: ct->router, mr->router, router->pacs)",
    ),
    (
        "no failures at an unknown node",
        with_expectation("no_failures: {node: viewer}"),
        7, "expectations[0].no_failures.node", "'viewer' does not exist",
    ),
    (
        "failure on an unknown hop",
        with_expectation("failure:", "  kind: no-accepted-context", "  hop: router->new-pacs"),
        9, "expectations[0].failure.hop", "'router->new-pacs' does not exist",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "field", "phrase"),
    [case[1:] for case in MISMATCHED_SCENARIOS],
    ids=[case[0] for case in MISMATCHED_SCENARIOS],
)
def test_scenario_checked_against_topology(
    tmp_path: Path, topology: Topology, text: str, line: int, field: str, phrase: str
) -> None:
    """A scenario naming what the topology lacks fails with the line and field of the name."""
    path = write(tmp_path, text)
    load_scenario(path)

    error = load_error(path, topology)

    assert error.path == str(path)
    assert phrase in problem_at(error, line, field)
    assert len(error.problems) == 1, error.problems


def test_minimal_scenario_fits_topology(tmp_path: Path, topology: Topology) -> None:
    """The minimal scenario of these tests fits their topology, so each bad case has one fault."""
    text = with_timeline("{action: start_sending, at_s: 0, senders: [ct]}", CUTOVER_STEP)

    scenario = load_scenario(write(tmp_path, text), topology)

    assert isinstance(scenario, Scenario)
    assert scenario.senders[0].sender_name == "ct"


def test_single_sop_class_becomes_list(tmp_path: Path) -> None:
    """A single SOP class keyword in a filter is read as a list of one UID."""
    path = write(tmp_path, with_expectation("delivered: {to: pacs, sop_class: CTImageStorage}"))

    scenario = load_scenario(path)

    delivered = scenario.expectations[0].delivered
    assert delivered is not None
    assert delivered.sop_class == ("1.2.840.10008.5.1.4.1.1.2",)


def test_duplicate_key_names_line(tmp_path: Path) -> None:
    """A key given twice in a scenario fails with the line of the second one."""
    path = write(tmp_path, MINIMAL + "name: again\n")

    error = load_error(path, None)

    assert error.problems == [
        "line 8: invalid YAML: duplicate key 'name' in the mapping that starts at line 1; "
        "a key can appear only once in a mapping"
    ]


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    """A scenario that is not valid YAML fails with the line of the syntax error."""
    path = write(tmp_path, MINIMAL.replace("{modality: ct}", "{modality: ct"))

    error = load_error(path, None)

    assert len(error.problems) == 1
    assert error.problems[0].startswith("line 4: invalid YAML: ")


@pytest.mark.parametrize("path", BUNDLED_SCENARIOS, ids=lambda p: p.name)
def test_bundled_scenario_fits_topology(path: Path) -> None:
    """Every scenario in scenarios/ loads and fits at least one topology in topologies/."""
    load_scenario(path)
    problems: dict[str, list[str]] = {}
    for topology_path in BUNDLED_TOPOLOGIES:
        try:
            load_scenario(path, load_topology(topology_path))
            return
        except ConfigError as exc:
            problems[topology_path.name] = exc.problems
    pytest.fail(f"{path.name} fits no bundled topology: {problems}")


def test_bundled_scenarios_exist() -> None:
    """The scenarios folder holds at least one file, so the loop above tests something."""
    assert BUNDLED_SCENARIOS


def test_schema_command_prints_json() -> None:
    """`rehearse schema scenario` prints a JSON Schema with the top-level fields."""
    result = CliRunner().invoke(app, ["schema", "scenario"])

    assert result.exit_code == EXIT_OK, result.output
    document = json.loads(result.stdout)
    assert {"name", "senders", "timeline", "expectations"} <= set(document["properties"])


@pytest.mark.parametrize("path", BUNDLED_SCENARIOS, ids=lambda p: p.name)
def test_schema_accepts_bundled_scenario(path: Path) -> None:
    """The printed JSON Schema accepts every bundled scenario file."""
    jsonschema = pytest.importorskip("jsonschema")
    from ruamel.yaml import YAML

    result = CliRunner().invoke(app, ["schema", "scenario"])
    document = YAML(typ="safe").load(path)

    jsonschema.validate(document, json.loads(result.stdout))


def test_validate_command_accepts_bundled_pair() -> None:
    """`rehearse validate` exits 0 for the bundled topology and scenario."""
    topology = REPO / "topologies" / "hospital-cutover.yaml"
    scenario = REPO / "scenarios" / "cutover.yaml"

    result = CliRunner().invoke(app, ["validate", str(topology), str(scenario)])

    assert result.exit_code == EXIT_OK, result.output


def test_validate_command_rejects_bad_scenario(tmp_path: Path) -> None:
    """`rehearse validate` exits 2 and prints the scenario's file, line and field on stderr."""
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY, encoding="utf-8")
    scenario = write(tmp_path, MINIMAL.replace("{modality: ct}", "{modality: cr}"))

    result = CliRunner().invoke(app, ["validate", str(topology), str(scenario)])

    assert result.exit_code == EXIT_INVALID_INPUT
    assert str(scenario) in result.stderr
    assert "line 3: senders[0].modality: 'cr' is not a modality node" in result.stderr
