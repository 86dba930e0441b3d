"""Warm start: a job handed to the warm process behaves as the job run in its own process.

Each test starts a real server (``step.py --serve``) and real job processes
(``step.py <step> ...``), as the workflow does.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from mask_first.cohort import failure_path
from mask_first.forkserver import ENV
from mask_first.synthetic import write_synthetic_slide
from mask_first.tiles.grid import grid_tiles

STEP = REPO / "workflow" / "scripts" / "step.py"
TILE_JOB = {"mpp": 1.0, "level": None, "tile_extent": 128, "stride": 96, "last": "keep", "mpp_override": None}


def _tiles_argv(d: Path, slide: str, slide_path: Path) -> list[str]:
    files = {"slide": slide, "input": {"slide": str(slide_path)},
             "output": {"info": str(d / f"{slide}.info.parquet"), "tiles": str(d / f"{slide}.tiles.parquet")}}
    return [sys.executable, str(STEP), "tiles", str(d / f"{slide}.log"), "1", json.dumps(files), json.dumps(TILE_JOB)]


def _wait_for(predicate, timeout=20.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server(tmp_path):
    """A running warm process: (address, its log path, the Popen)."""
    address = f"mask-first-test-{secrets.token_hex(6)}"
    log = tmp_path / "server.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(STEP), "--serve", address, str(os.getpid())],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _wait_for(lambda: "ready" in log.read_text(), what="the server's preload")
    yield address, log, proc
    proc.terminate()
    proc.wait(timeout=30)


def _jobs_in(log: Path) -> dict[int, list[str]]:
    """pid -> the server log's lines about that job (``<step> <slide>``, ``exit <code>``)."""
    out: dict[int, list[str]] = {}
    for m in re.finditer(r"^job (\d+): (.*)$", log.read_text(), re.M):
        out.setdefault(int(m.group(1)), []).append(m.group(2))
    return out


def test_a_job_run_by_the_warm_process_writes_what_its_own_process_writes(tmp_path, server):
    address, log, _ = server
    slide = write_synthetic_slide(tmp_path / "s.tiff", 1024, 768, mpp=0.5, seed=4)
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    warm.mkdir(), cold.mkdir()
    env = {k: v for k, v in os.environ.items() if k != ENV}
    # a variable only the job has: the child must run in the job's environment and directory
    subprocess.run(_tiles_argv(warm, "s", slide), env={**env, ENV: address, "MF_PROBE": "1"}, cwd=warm, check=True)
    subprocess.run(_tiles_argv(cold, "s", slide), env=env, cwd=cold, check=True)

    assert list(_jobs_in(log).values()) == [["tiles s", "exit 0"]]  # it did go through the server
    a, b = pq.read_table(warm / "s.tiles.parquet"), pq.read_table(cold / "s.tiles.parquet")
    assert a.equals(b)
    ref = grid_tiles((512, 384), (128, 128), (96, 96), last="keep")  # 1 µm/px = level 1 of 0.5 µm/px
    assert np.array_equal(np.c_[a.column("x").to_numpy(), a.column("y").to_numpy()], ref)
    assert pq.read_table(warm / "s.info.parquet").equals(pq.read_table(cold / "s.info.parquet"))
    assert "tiles done" in (warm / "s.log").read_text()


def test_start_returns_once_the_socket_is_bound_so_the_first_job_is_not_turned_away(tmp_path):
    from mask_first.forkserver import start

    slide = write_synthetic_slide(tmp_path / "s.tiff", 512, 384, mpp=0.5, seed=4)
    address = f"mask-first-test-{secrets.token_hex(6)}"
    with open(tmp_path / "server.log", "w") as log:
        proc = start([sys.executable, str(STEP)], address, log)
    try:
        assert proc is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect("\0" + address)  # bound already: no ConnectionRefusedError
        # a job started right away waits in the backlog for the imports instead of running on its own
        subprocess.run(_tiles_argv(tmp_path, "s", slide), env={**os.environ, ENV: address}, check=True)
        assert list(_jobs_in(tmp_path / "server.log").values()) == [["tiles s", "exit 0"]]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_child_takes_the_jobs_environment_directory_and_streams(tmp_path, server):
    address, log, _ = server
    # a step's usage error is printed by the step itself: on the job's stderr, from the job's cwd
    proc = subprocess.run([sys.executable, str(STEP), "no_such_step", "x", "1", "{}", "{}"], cwd=tmp_path,
                          env={**os.environ, ENV: address}, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "usage: step.py" in proc.stderr
    (pid, lines), = _jobs_in(log).items()
    assert lines[-1] == "exit 1"


def test_a_bad_slide_fails_with_the_one_line_error_through_the_warm_process(tmp_path, server):
    address, log, _ = server
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide at all")
    proc = subprocess.run(_tiles_argv(tmp_path, "bad", bad), env={**os.environ, ENV: address},
                          capture_output=True, text=True)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if "mask-first:" in ln]
    assert len(errors) == 1 and "slide bad:" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    failure = json.loads(failure_path(tmp_path / "bad.log").read_text())  # the cohort tables' record of it
    assert failure["slide_id"] == "bad" and failure["error"] in errors[0]
    assert list(_jobs_in(log).values()) == [["tiles bad", "exit 1"]]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_killing_the_job_process_stops_its_forked_child(tmp_path, server, how):
    address, log, _ = server
    slide = write_synthetic_slide(tmp_path / "slow.tiff", 512, 384, mpp=0.5, seed=4)
    os.mkfifo(tmp_path / "slow.log")  # the step opens its log first, and opening a FIFO blocks until a reader comes
    job = subprocess.Popen(_tiles_argv(tmp_path, "slow", slide), env={**os.environ, ENV: address},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = _wait_for(lambda: next(iter(_jobs_in(log)), None), what="the fork")
    time.sleep(0.3)
    assert _jobs_in(log)[pid] == ["tiles slow"]  # still running
    job.send_signal(getattr(signal, how))
    assert job.wait(timeout=20) == -getattr(signal, how)  # the job dies as a job would
    # SIGTERM is forwarded to the child; after SIGKILL the child sees its job's socket close
    lines = _wait_for(lambda: len(_jobs_in(log)[pid]) == 2 and _jobs_in(log)[pid], what="the child's exit")
    assert lines[1] == f"exit {-signal.SIGTERM}"
    assert not Path(f"/proc/{pid}").exists()
    assert not (tmp_path / "slow.tiles.parquet").exists()


def test_a_job_runs_in_its_own_process_when_no_server_answers(tmp_path):
    slide = write_synthetic_slide(tmp_path / "s.tiff", 1024, 768, mpp=0.5, seed=4)
    env = {**os.environ, ENV: f"mask-first-nobody-{secrets.token_hex(6)}"}
    subprocess.run(_tiles_argv(tmp_path, "s", slide), env=env, check=True)
    x = pq.read_table(tmp_path / "s.tiles.parquet").column("x").to_numpy()
    assert np.array_equal(x, grid_tiles((512, 384), (128, 128), (96, 96), last="keep")[:, 0])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_the_server_refuses_another_user(tmp_path, server):
    from mask_first import forkserver

    address, log, _ = server
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a client running as nobody
        try:
            os.setgid(65534), os.setuid(65534)
            os.write(w, repr(forkserver.run(address, ["tiles"])).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        answer = f.read()
    os.waitpid(pid, 0)
    assert answer == "None"  # refused before anything was forked: the caller runs the job itself
    _wait_for(lambda: "refused a request (uid 65534)" in log.read_text(), what="the refusal in the log")
    assert _jobs_in(log) == {}


def test_the_server_stops_when_the_process_that_started_it_is_gone(tmp_path):
    address = f"mask-first-test-{secrets.token_hex(6)}"
    log = tmp_path / "server.log"
    # an intermediate parent that starts the server, prints its pid and exits
    starter = (f"import subprocess, sys, os; p = subprocess.Popen([sys.executable, {str(STEP)!r}, '--serve', "
               f"{address!r}, str(os.getpid())], stdout=open({str(log)!r}, 'w'), stderr=subprocess.STDOUT); "
               f"print(p.pid)")
    pid = int(subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, check=True).stdout)
    _wait_for(lambda: not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z",
              timeout=30, what="the orphaned server to exit")
