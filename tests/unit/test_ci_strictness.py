"""Under CI=true a missing prerequisite (../shared slides, SLURM) fails the run; elsewhere it skips with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

#: a test that needs ../shared (through the shared_slides fixture) and nothing else
SHARED_TEST = "tests/unit/test_slides.py::test_ome_subifd_pyramid_levels_are_read"


def _pytest(tmp_path: Path, *, ci: bool, slides: Path, tests: str = SHARED_TEST) -> subprocess.CompletedProcess:
    """pytest in a subprocess on a copy of the tests, as a clone without ../shared would run it."""
    copy = tmp_path / "clone"
    if not copy.exists():
        shutil.copytree(REPO / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["MASK_FIRST_SHARED_SLIDES"] = str(slides)
    env["PYTHONPATH"] = str(REPO)  # the package under test, not an installed copy
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", tests],
        cwd=copy, env=env, capture_output=True, text=True, timeout=300,
    )


def test_missing_shared_slides_fail_under_ci_and_skip_elsewhere(tmp_path):
    absent = tmp_path / "no-shared" / "data" / "slides"
    strict = _pytest(tmp_path, ci=True, slides=absent)
    out = strict.stdout + strict.stderr
    assert strict.returncode == 1, out[-3000:]
    assert "1 error" in out and "skipped" not in out, out[-3000:]  # fails in the fixture: an error
    assert f"real slides not found at {absent}" in out and "CI=true" in out
    relaxed = _pytest(tmp_path, ci=False, slides=absent)
    out = relaxed.stdout + relaxed.stderr
    assert relaxed.returncode == 0, out[-3000:]
    assert "1 skipped" in out and f"real slides not found at {absent}" in out


def test_present_shared_slides_run_the_test_under_ci(tmp_path, shared_slides):
    proc = _pytest(tmp_path, ci=True, slides=shared_slides)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:]


def test_missing_slurm_fails_under_ci_and_skips_elsewhere(monkeypatch):
    sys.path.insert(0, str(REPO / "tests" / "cluster"))
    import conftest
    import slurm_cluster

    monkeypatch.setattr(slurm_cluster, "slurm_available", lambda: (False, "SLURM/munge binaries missing: slurmd"))
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true.*SLURM/munge binaries missing: slurmd"):
        slurm_cluster.require_slurm()
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="SLURM/munge binaries missing: slurmd"):
        slurm_cluster.require_slurm()


@pytest.mark.parametrize("ci, rc", [("true", 1), ("", 0)])
def test_install_slurm_cannot_install_exits_1_under_ci_only(tmp_path, ci, rc):
    """The real script, with its binary list pointing at a name that exists nowhere and a non-root ``id``."""
    script = (REPO / ".ci/install-slurm.sh").read_text()
    assert 'NEEDED_BINARIES="munged slurmctld' in script  # the line replaced below
    script = script.replace('NEEDED_BINARIES="munged slurmctld', 'NEEDED_BINARIES="mf-no-such-binary munged slurmctld', 1)
    (tmp_path / "install.sh").write_text(script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "id").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CI": ci}
    proc = subprocess.run(["bash", str(tmp_path / "install.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    assert "not root: cannot install" in proc.stdout and "mf-no-such-binary" in proc.stdout
    assert ("failing the run" in proc.stdout) == (rc == 1) and ("SKIPPED" in proc.stdout) == (rc == 0)
