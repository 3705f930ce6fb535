"""Measuring ``simulator/`` as of a git revision instead of the working tree.

Other work may change the working tree while a benchmark runs. A revision
keeps every process of one benchmark on the same code, and names it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _procs import REPO_DIR, BenchmarkError

SOURCE_PREFIX = "rehearse-bench-src-"
SOURCE_ENV = "REHEARSE_BENCH_SOURCE"
REVISION_ENV = "REHEARSE_BENCH_REVISION"


def reexec_from_revision(revision: str) -> None:
    """Re-run this script with ``simulator/`` taken from a git revision; return if already done.

    The package is extracted with ``git archive`` into a temporary folder
    that goes first on PYTHONPATH, ahead of the editable install, so this
    process and every child import that revision even while the working
    tree changes. The re-run process removes the folder through
    :func:`remove_revision_source`.
    """
    if os.environ.get(SOURCE_ENV):
        return
    found = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    if found.returncode != 0:
        stderr = found.stderr.decode(errors="replace").strip()
        raise BenchmarkError(f"--revision {revision} is not a commit of {REPO_DIR}: {stderr}")
    commit = found.stdout.decode().strip()
    source = Path(tempfile.mkdtemp(prefix=SOURCE_PREFIX))
    archive = _git("archive", commit, "simulator")
    if archive.returncode != 0:
        raise BenchmarkError(f"git archive {commit} simulator failed: {archive.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    python_path = os.pathsep.join(p for p in (str(source), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": python_path, SOURCE_ENV: str(source), REVISION_ENV: commit}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True, check=False)


def remove_revision_source() -> None:
    """Remove the folder :func:`reexec_from_revision` extracted, if this process uses one."""
    source = os.environ.get(SOURCE_ENV)
    if source and Path(source).name.startswith(SOURCE_PREFIX):
        shutil.rmtree(source, ignore_errors=True)
