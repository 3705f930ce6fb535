"""The ``rehearse`` command: parse, call, print. Exit 0 when every expectation
held, 1 when one failed, 2 on invalid input."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from simulator.errors import SimulatorError

app = typer.Typer(
    name="rehearse",
    help="Rehearse DICOM routing: replay a corpus through a simulated site and classify every failure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console(soft_wrap=True)

EXIT_OK = 0
EXIT_EXPECTATION_FAILED = 1
EXIT_INVALID_INPUT = 2
EXIT_INTERRUPTED = 130


def _fail_input(exc: Exception) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(EXIT_INVALID_INPUT)


# Options of the live event stream, shared by run and watch; see docs/live-events.md.
MqttUsername = Annotated[str | None, typer.Option(
    "--mqtt-username", help="Broker user name (default: $REHEARSE_MQTT_USERNAME).")]
MqttPasswordEnv = Annotated[str | None, typer.Option(
    "--mqtt-password-env", metavar="VAR",
    help="Environment variable that contains the broker password (default: REHEARSE_MQTT_PASSWORD).")]
MqttTls = Annotated[bool, typer.Option(
    "--mqtt-tls", help="Connect to the broker over TLS, as an mqtts:// URL does.")]
MqttCaFile = Annotated[Path | None, typer.Option(
    "--mqtt-ca-file", help="PEM file of the CAs that signed the broker's certificate; implies --mqtt-tls.")]


@app.command()
def run(
    topology: Annotated[Path, typer.Argument(help="Topology YAML file.")],
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    corpus: Annotated[Path | None, typer.Option(help="Corpus folder; overrides the scenario's.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory to create (default: runs/<scenario>-<time>).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed; overrides the scenario's.")] = None,
    include_phi: Annotated[bool, typer.Option("--include-phi", help="Add patient names, IDs and birth dates to the ledger rows. Without it, no log, ledger or report has any.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    mqtt: Annotated[str | None, typer.Option(
        "--mqtt", metavar="URL", help="Also publish every event to this MQTT broker, "
        "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]; overrides the topology's events.mqtt.")] = None,
    mqtt_username: MqttUsername = None,
    mqtt_password_env: MqttPasswordEnv = None,
    mqtt_tls: MqttTls = False,
    mqtt_ca_file: MqttCaFile = None,
    mqtt_buffer: Annotated[int | None, typer.Option(
        "--mqtt-buffer", metavar="EVENTS", help="Events kept while the broker is unreachable "
        "(default: the topology's events.mqtt_buffer, else 10000); the oldest are dropped past this.")] = None,
    toxiproxy_api: Annotated[int | None, typer.Option(
        "--toxiproxy-api", metavar="PORT", min=0, max=65535,
        help="Serve a Toxiproxy-compatible API for the links on 127.0.0.1:PORT while the run lasts.")] = None,
) -> None:
    """Run a scenario through a topology and write the run directory."""
    from simulator.live.settings import resolve_mqtt_settings
    from simulator.runner import RunOptions, run_rehearsal
    from simulator.scenario import load_scenario
    from simulator.topology import load_topology

    try:
        topo = load_topology(topology)
        scen = load_scenario(scenario, topo)
        if corpus is not None and not corpus.is_dir():
            raise SimulatorError(f"--corpus {corpus}: not a folder; give a folder of DICOM files")
        mqtt_settings = resolve_mqtt_settings(
            mqtt, topo.events.mqtt, username=mqtt_username, password_env=mqtt_password_env,
            tls=mqtt_tls, ca_file=mqtt_ca_file, buffer_events=mqtt_buffer,
            topology_buffer_events=topo.events.mqtt_buffer,
        )
    except SimulatorError as exc:
        raise _fail_input(exc) from exc
    if out_dir is None:
        import datetime as dt

        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = Path("runs") / f"{scen.name}-{stamp}"
    options = RunOptions(topology, scenario, out_dir, corpus, seed, include_phi,
                         mqtt=mqtt_settings, toxiproxy_api_port=toxiproxy_api)
    try:
        result = _run_with_progress(run_rehearsal, topo, scen, options, progress)
    except SimulatorError as exc:
        raise _fail_input(exc) from exc
    except KeyboardInterrupt:
        err.print(f"interrupted: {out_dir} has every event recorded so far, and the ledger, "
                  "summary and report of what finished", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _print_result(result.summary, result.run_dir)
    raise typer.Exit(EXIT_OK if result.expectations_held else EXIT_EXPECTATION_FAILED)


def _run_with_progress(run_rehearsal, topo, scen, options, show: bool):  # type: ignore[no-untyped-def]
    if not show or not err.is_terminal:
        return run_rehearsal(topo, scen, options)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("delivered {task.fields[delivered]}  failed {task.fields[failed]}"),
        TimeElapsedColumn(), console=err, transient=False,
    ) as bar:
        task = bar.add_task("sent", total=None, delivered=0, failed=0)

        def update(p):  # type: ignore[no-untyped-def]
            bar.update(task, total=p.total or None, completed=p.sent, delivered=p.delivered,
                       failed=p.failed)

        return run_rehearsal(topo, scen, options, update)


def _print_result(summary: dict, run_dir: Path) -> None:  # type: ignore[type-arg]
    states = summary.get("states", {})
    out.print(
        f"Run {summary.get('run_id')} ({summary.get('outcome')}): "
        f"{states.get('delivered', 0)} delivered, {states.get('failed', 0)} failed, "
        f"{states.get('never-attempted', 0)} never attempted, of {summary.get('rows', 0)} expected deliveries.",
        highlight=False,
    )
    for failure in summary.get("failures", [])[:10]:
        out.print(f"  {failure['count']:>4} x {failure['failure_kind']} on {failure['hop']}: "
                  f"{failure['reason']}", highlight=False, markup=False)
    for verdict in summary.get("expectations", []):
        mark = "PASS" if verdict["passed"] else "FAIL"
        out.print(f"  {mark} {verdict['name']}: {verdict.get('reason', '')}", highlight=False,
                  markup=False)
    out.print(f"Run directory: {run_dir}", highlight=False)


@app.command()
def schema(
    kind: Annotated[str, typer.Argument(help="'topology' or 'scenario'.")] = "topology",
) -> None:
    """Print the JSON Schema of topology or scenario files, for editors."""
    from pydantic import BaseModel

    from simulator.scenario.model import Scenario
    from simulator.topology.model import Topology

    models: dict[str, type[BaseModel]] = {"topology": Topology, "scenario": Scenario}
    if kind not in models:
        raise _fail_input(ValueError(f"unknown schema {kind!r}; choose topology or scenario"))
    document = models[kind].model_json_schema(by_alias=True)
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out.print_json(json.dumps(document))


@app.command()
def validate(
    topology: Annotated[Path, typer.Argument(help="Topology YAML file.")],
    scenario: Annotated[Path | None, typer.Argument(help="Scenario YAML file.")] = None,
) -> None:
    """Check topology (and scenario) files without running anything."""
    from simulator.scenario import load_scenario
    from simulator.topology import load_topology

    try:
        topo = load_topology(topology)
        if scenario is not None:
            load_scenario(scenario, topo)
    except SimulatorError as exc:
        raise _fail_input(exc) from exc
    out.print(f"{topology}: {len(topo.nodes)} nodes, {len(topo.links)} links: valid", highlight=False)


EXIT_REGRESSION = 1


@app.command()
def diff(
    run_a: Annotated[Path, typer.Argument(help="Run directory of the earlier rehearsal (A).")],
    run_b: Annotated[Path, typer.Argument(help="Run directory of the later rehearsal (B).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")] = False,
    as_markdown: Annotated[bool, typer.Option(
        "--markdown", help="Print Markdown, for a change ticket.")] = False,
    timing_threshold: Annotated[float, typer.Option(
        "--timing-threshold", metavar="PCT",
        help="Flag a median or 95th percentile time that moved by more than PCT percent.")] = 20.0,
) -> None:
    """Compare two runs: outcomes, deliveries, integrity, timing and configuration.

    Exit 0 when B has no regression against A, 1 when it has, 2 on invalid input.
    """
    from simulator.compare import compare_runs, diff_markdown, load_run, print_diff

    if as_json and as_markdown:
        raise _fail_input(ValueError("--json and --markdown exclude each other; choose one"))
    if not timing_threshold > 0:
        raise _fail_input(ValueError(f"--timing-threshold {timing_threshold:g}: give a "
                                     "percentage greater than 0, such as 20"))
    try:
        result = compare_runs(load_run(run_a), load_run(run_b), timing_threshold)
    except SimulatorError as exc:
        raise _fail_input(exc) from exc
    if as_json:
        sys.stdout.write(json.dumps(result.as_record(), indent=2, default=str) + "\n")
    elif as_markdown:
        sys.stdout.write(diff_markdown(result))
    else:
        print_diff(result, out)
    raise typer.Exit(EXIT_REGRESSION if result.has_regression else EXIT_OK)


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(
        metavar="RUN", help="One run directory, or two with --diff (A, then B).")],
    compare: Annotated[bool, typer.Option(
        "--diff", help="Report on B against A instead of one run.")] = False,
    out_file: Annotated[Path | None, typer.Option(
        "--out", help="HTML file to write (default: RUN/report.html, or "
                      "RUN_B/diff-<A>.html with --diff).")] = None,
) -> None:
    """Write one self-contained HTML report of a run, or of two runs compared.

    Exit 0 when the report was written, even when B has regressions (rehearse
    diff sets an exit code for those), and 2 on invalid input.
    """
    from simulator.compare import compare_runs, load_run
    from simulator.report import render_diff_report, render_run_report

    expected = 2 if compare else 1
    if len(runs) != expected:
        usage = "rehearse report --diff RUN_A RUN_B" if compare else "rehearse report RUN"
        raise _fail_input(ValueError(
            f"got {len(runs)} run directories, expected {expected}: {usage}"))
    try:
        loaded = [load_run(path) for path in runs]
        if compare:
            page = render_diff_report(compare_runs(loaded[0], loaded[1]))
            target = out_file or runs[1] / f"diff-{runs[0].resolve().name}.html"
        else:
            page = render_run_report(loaded[0])
            target = out_file or runs[0] / "report.html"
    except SimulatorError as exc:
        raise _fail_input(exc) from exc
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise _fail_input(OSError(f"{target}: cannot write the report ({exc.strerror}); "
                                  "choose another --out")) from exc
    out.print(f"Report: {target}", highlight=False)


@app.command()
def check(
    topology: Annotated[Path, typer.Argument(help="Topology YAML file.")],
    corpus: Annotated[Path | None, typer.Option(help="Corpus folder; overrides the scenario's.")] = None,
    scenario: Annotated[Path | None, typer.Option(help="Scenario YAML file: its senders, selections and timeline.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")] = False,
    against: Annotated[Path | None, typer.Option(help="Probe file from rehearse probe; compare it with --node.")] = None,
    node: Annotated[str | None, typer.Option(help="Declared node to compare with the --against probe file.")] = None,
) -> None:
    """Predict, before a run, the outcome of every route and (SOP class, transfer syntax).

    Exit 0 when no failure is predicted, 1 when one is (or, with --against,
    when the probed system lacks what the node declares), 2 on invalid input.
    """
    from simulator.capability.commands import run_check

    try:
        code = run_check(topology, corpus, scenario, as_json, against, node, out)
    except SimulatorError as exc:
        raise _fail_input(exc) from exc
    raise typer.Exit(code)


@app.command()
def probe(
    host: Annotated[str, typer.Argument(help="Host of the one system to probe; nothing else is contacted.")],
    port: Annotated[int, typer.Argument(help="Its DICOM port.")],
    called_ae: Annotated[str, typer.Option("--called-ae", help="AE title of the system.")],
    calling_ae: Annotated[str, typer.Option("--calling-ae", help="AE title the probe calls from.")] = "REHEARSE_PROBE",
    out_file: Annotated[Path | None, typer.Option("--out", help="YAML file to write the node declaration to (default: print it).")] = None,
    pause_s: Annotated[float, typer.Option("--pause-s", help="Pause between associations, in seconds.")] = 0.2,
    max_associations: Annotated[int, typer.Option("--max-associations", help="Maximum number of associations; a probe that needs more is rejected before it starts.")] = 60,
    sop_classes: Annotated[str | None, typer.Option("--sop-classes", help="Comma-separated SOP class keywords or UIDs to probe (default: every storage class, Verification and Query/Retrieve).")] = None,
) -> None:
    """Discover which SOP classes and transfer syntaxes a live system accepts, and its AE title checks."""
    from simulator.capability.commands import parse_sop_classes, run_probe
    from simulator.capability.probe import ProbeOptions

    try:
        options = ProbeOptions(host, port, called_ae, calling_ae, pause_s, max_associations,
                               parse_sop_classes(sop_classes))
        code = run_probe(options, out_file, out, err)
    except SimulatorError as exc:
        raise _fail_input(exc) from exc
    raise typer.Exit(code)


@app.command()
def watch(
    broker: Annotated[str, typer.Argument(
        metavar="MQTT_URL", help="Broker, mqtt://HOST[:PORT] or mqtts://HOST[:PORT].")],
    run_id: Annotated[str | None, typer.Argument(
        metavar="RUN_ID", help="Follow this run only (its id is in summary.json and on every topic); all runs when omitted.")] = None,
    mqtt_username: MqttUsername = None,
    mqtt_password_env: MqttPasswordEnv = None,
    mqtt_tls: MqttTls = False,
    mqtt_ca_file: MqttCaFile = None,
) -> None:
    """Show a live table of the links and failures of running rehearsals, read from MQTT.

    Ends when the run (or every run seen running) has finished: exit 0 when
    every expectation held, 1 when one failed, 2 on invalid input, 130 on Ctrl-C.
    """
    import asyncio

    from simulator.live.settings import resolve_mqtt_settings
    from simulator.live.watch import watch as watch_runs

    try:
        settings = resolve_mqtt_settings(broker, username=mqtt_username,
                                         password_env=mqtt_password_env, tls=mqtt_tls,
                                         ca_file=mqtt_ca_file)
    except SimulatorError as exc:
        raise _fail_input(exc) from exc
    assert settings is not None
    try:
        state = asyncio.run(watch_runs(
            settings, run_id, out,
            on_subscribed=lambda topics: err.print(f"subscribed to {topics} on {settings.broker}",
                                                   highlight=False)))
    except KeyboardInterrupt:
        err.print("watch interrupted")
        raise typer.Exit(130) from None
    raise typer.Exit(EXIT_OK if state.expectations_held else EXIT_EXPECTATION_FAILED)


def _interrupt_on_sigterm(signum: int, _frame: object) -> None:
    # timeout(1), CI runners and docker stop send SIGTERM: end the run as
    # Ctrl-C does, so the ledger, summary and report are still written.
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted: the run directory has every event recorded so far, and the "
                  "ledger, summary and report of what finished")
        sys.exit(130)
