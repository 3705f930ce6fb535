"""The ``rehearse`` command: parse, call, print. Exit 0 when every expectation
held, 1 when one failed, 2 on invalid input."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

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


def _fail_input(exc: Exception) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(EXIT_INVALID_INPUT)


@app.command()
def run(
    topology: Annotated[Path, typer.Argument(help="Topology YAML file.")],
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    corpus: Annotated[Optional[Path], typer.Option(help="Corpus folder; overrides the scenario's.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run directory to create (default: runs/<scenario>-<time>).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed; overrides the scenario's.")] = None,
    include_phi: Annotated[bool, typer.Option("--include-phi", help="Allow patient names, IDs and birth dates in logs and reports.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run a scenario through a topology and write the run directory."""
    from simulator.runner import RunOptions, run_rehearsal
    from simulator.scenario import load_scenario
    from simulator.topology import load_topology

    try:
        topo = load_topology(topology)
        scen = load_scenario(scenario, topo)
        if corpus is not None and not corpus.is_dir():
            raise SimulatorError(f"--corpus {corpus}: not a folder; give a folder of DICOM files")
    except SimulatorError as exc:
        raise _fail_input(exc) from exc
    if out_dir is None:
        import datetime as dt

        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = Path("runs") / f"{scen.name}-{stamp}"
    options = RunOptions(topology, scenario, out_dir, corpus, seed, include_phi)
    try:
        result = _run_with_progress(run_rehearsal, topo, scen, options, progress)
    except SimulatorError as exc:
        raise _fail_input(exc) from exc
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
    from simulator.scenario.model import Scenario
    from simulator.topology.model import Topology

    models = {"topology": Topology, "scenario": Scenario}
    if kind not in models:
        raise _fail_input(ValueError(f"unknown schema {kind!r}; choose topology or scenario"))
    document = models[kind].model_json_schema(by_alias=True)
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out.print_json(json.dumps(document))


@app.command()
def validate(
    topology: Annotated[Path, typer.Argument(help="Topology YAML file.")],
    scenario: Annotated[Optional[Path], typer.Argument(help="Scenario YAML file.")] = None,
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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted; the run directory keeps every event recorded so far")
        sys.exit(130)
