"""Warm start: one process per run imports the libraries, each per-slide job is a fork of it.

A per-slide job is a fresh ``python workflow/scripts/step.py ...`` process (see
:mod:`mask_first.jobs`). On a small slide its work takes milliseconds, and its
cost is starting the interpreter and importing numpy, pyarrow, tifffile, h5py,
OpenCV and the package: 0.3-0.5 s a job here, paid by every job of every
slide. With ``warm_start: true`` (the default) a local run pays it once:

* the Snakefile's ``onstart`` starts :func:`serve` through :func:`start`,
  which returns once the server's abstract Unix socket is bound (the imports
  follow; jobs connecting meanwhile wait in the backlog), and names the socket
  in the environment variable ``MASK_FIRST_FORKSERVER``, which every job inherits;
* a job's ``step.py`` calls :func:`run`: it passes the server its arguments,
  working directory, environment, umask and standard streams (the file
  descriptors themselves, ``SCM_RIGHTS``), and waits;
* the server forks; the child takes over the job's directory, environment and
  streams and runs :func:`mask_first.jobs.main` as the fresh process would;
  the server reaps it and sends the job its exit status, which the job exits
  with (a child killed by a signal kills its job with that signal).

Cancelling a job cancels its work: the job forwards SIGINT, SIGTERM and SIGHUP
to the child, and the child terminates itself when its job's end of the socket
closes (the job was killed outright). Outputs are written through
:func:`mask_first.io.atomic_path` either way, so a killed child leaves nothing
that looks finished.

The server's log (``results/logs/warm_start.log``) has its preload time and
one line per job: ``job <pid>: <step> <slide>`` when forked, ``job <pid>: exit
<code>`` when reaped.

Only the user who started the server can use it (``SO_PEERCRED``). Where no
server answers (cluster jobs, ``--no-hooks``, ``warm_start: false``, a server
that has stopped) :func:`run` returns None and the job runs in its own process.
The server stops with the run (``onsuccess`` / ``onerror``), when the
Snakemake process that started it is gone, or after an idle hour.

Two differences from a fresh process, both deliberate: the child's numpy runs
BLAS single-threaded whatever the job's ``threads`` (set before the server
imports numpy, so no BLAS worker threads exist when it forks; Snakemake sets
the same for a one-thread job, and the steps do no large matrix products), and Snakemake's benchmark file of a job samples the waiting job process, not
the child: the steps log their own peak memory instead (:func:`mask_first.pipeline.run_step`).

This module imports only the standard library at module level, so the job
side costs an interpreter start and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Sequence

#: environment variable naming the server's socket (abstract namespace, without the leading NUL)
ENV = "MASK_FIRST_FORKSERVER"

#: what the server imports before it forks: everything a per-slide step loads
PRELOAD = (
    "numpy",
    "pyarrow",
    "pyarrow.parquet",
    "tifffile",
    "imagecodecs",
    "h5py",
    "cv2",
    "shapely",
    "openslide",
    "pyvips",
    "mask_first.jobs",
    "mask_first.pipeline",
    "mask_first.io",
    "mask_first.slides",
    "mask_first.cohort",
    "mask_first.qc",
    "mask_first.report",
    "mask_first.tiles.grid",
    "mask_first.tiles.coverage",
    "mask_first.tiles.pixels",
    "mask_first.tissue.detection",
    "mask_first.tissue.overlay",
    "mask_first.interop.h5",
)

_HEADER = struct.Struct("!I")  # length of the request's JSON
_REPLY = struct.Struct("!ci")  # b"P" + child pid, then b"X" + exit code (negative: killed by that signal)
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


# -- the job's side -----------------------------------------------------------


def run(address: str, argv: Sequence[str]) -> int | None:
    """Run ``step.py argv`` as a fork of the server at ``address``; its exit code, or None if no server answers.

    A negative code means the child was killed by that signal. None only when the
    server could not be reached before the job was handed over, so the caller
    can run the job itself without running it twice.
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect("\0" + address)
        umask = os.umask(0)
        os.umask(umask)
        request = json.dumps({"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ),
                              "umask": umask}).encode()
        socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
        kind, pid = _REPLY.unpack(_recv_exact(conn, _REPLY.size))
    except OSError:
        conn.close()
        return None
    if kind != b"P":
        conn.close()
        return None

    def forward(signum, frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for s in _FORWARDED:
        signal.signal(s, forward)
    try:
        kind, code = _REPLY.unpack(_recv_exact(conn, _REPLY.size))
    except ConnectionError:
        print(f"mask-first: the warm-start server stopped while running this job (pid {pid})", file=sys.stderr)
        return 1
    finally:
        conn.close()
    return code


def exit_with(code: int) -> None:
    """Exit as the child did: with its status, or by the signal that killed it."""
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


# -- the server's side --------------------------------------------------------


def _child(conn: socket.socket, fds: list[int], request: dict) -> None:
    """In the forked child: become the job's process, run the step, exit with its status."""
    import logging
    import threading
    import traceback

    signal.signal(signal.SIGINT, signal.default_int_handler)  # the server stops on SIGINT; a job raises
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(s, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["step.py", *request["argv"]]

    def watch():
        # the job never writes after its request: EOF means it is gone (killed outright)
        try:
            conn.recv(1)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    code = 0
    try:
        from mask_first.jobs import main

        code = main(request["argv"]) or 0
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def serve(address: str, parent_pid: int | None = None, idle_timeout: float = 3600.0,
          preload: Sequence[str] = PRELOAD, ready_fd: int | None = None) -> None:
    """Listen on the abstract socket ``address`` and fork one child per job (see the module docstring).

    ``ready_fd``: a pipe written to and closed once the socket is bound, before
    the imports, so the starter can wait for it (a job connecting earlier would
    find no socket and run in its own process). Returns when ``parent_pid`` is
    no longer this process's parent, after ``idle_timeout`` seconds without a
    job, or on SIGTERM / SIGINT, once the children running then have been reaped.
    """
    import importlib
    import selectors
    import time

    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before numpy: no BLAS threads when forking
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + address)  # bound before the imports: early jobs wait in the backlog, not fall back
    listener.listen(128)
    if ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    t0 = time.perf_counter()
    for name in preload:
        importlib.import_module(name)
    print(f"mask-first warm start: {address} ready, {len(preload)} modules in "
          f"{time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)

    stop = False

    def on_stop(signum, frame):
        nonlocal stop
        stop = True

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    running: dict[int, socket.socket] = {}
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    last = time.monotonic()
    listening = True
    while listening or running:
        if stop and listening:  # finish the jobs in flight, take no new ones
            sel.unregister(listener)
            listener.close()
            listening = False
        for key, _ in sel.select(timeout=1.0):
            if key.fileobj is wake_r:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            elif listening:
                _accept(listener, running)
                last = time.monotonic()
        _reap(running)
        if not running and (
            (parent_pid is not None and os.getppid() != parent_pid) or time.monotonic() - last > idle_timeout
        ):
            break
    listener.close()


def _accept(listener: socket.socket, running: dict[int, socket.socket]) -> None:
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid != os.getuid():
            raise PermissionError(f"uid {uid}")
        conn.settimeout(10)
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        if len(header) != _HEADER.size or len(fds) != 3:
            raise ConnectionError("short request")
        request = json.loads(_recv_exact(conn, _HEADER.unpack(header)[0]))
        conn.settimeout(None)
    except (OSError, ValueError) as exc:
        print(f"mask-first warm start: refused a request ({exc})", file=sys.stderr, flush=True)
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        listener.close()
        for other in running.values():
            other.close()
        _child(conn, fds, request)  # never returns
    for fd in fds:
        os.close(fd)
    running[pid] = conn
    print(f"job {pid}: {_describe(request['argv'])}", file=sys.stderr, flush=True)
    try:
        conn.sendall(_REPLY.pack(b"P", pid))
    except OSError:
        pass  # the job is gone: the child notices the closed socket and stops


def _describe(argv: Sequence[str]) -> str:
    """``<step> <slide>`` for the server's log (the job's argv is step.py's)."""
    try:
        return f"{argv[0]} {json.loads(argv[3])['slide']}"
    except (IndexError, KeyError, TypeError, ValueError):
        return " ".join(argv)[:200]


def _reap(running: dict[int, socket.socket]) -> None:
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = running.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        print(f"job {pid}: exit {code}", file=sys.stderr, flush=True)
        if conn is not None:
            try:
                conn.sendall(_REPLY.pack(b"X", code))
            except OSError:
                pass
            conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``step.py --serve ADDRESS PARENT_PID [READY_FD]``: run the server (started by :func:`start`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) not in (2, 3):
        raise SystemExit("usage: step.py --serve ADDRESS PARENT_PID [READY_FD]")
    serve(argv[0], int(argv[1]), ready_fd=int(argv[2]) if len(argv) == 3 else None)
    return 0


def start(command: Sequence[str], address: str, log, timeout: float = 30.0):
    """Start the server (``command + ["--serve", address, <pid>, <fd>]``) and wait until it listens.

    Returns the ``subprocess.Popen``, or None (the server is killed) if it did not
    bind its socket within ``timeout`` seconds; the jobs then run in their own processes.
    """
    import select
    import subprocess

    r, w = os.pipe()
    try:
        proc = subprocess.Popen([*command, "--serve", address, str(os.getpid()), str(w)], pass_fds=(w,),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    finally:
        os.close(w)
    try:
        ready = select.select([r], [], [], timeout)[0] and os.read(r, 1) == b"1"
    finally:
        os.close(r)
    if not ready:
        proc.kill()
        proc.wait()
        return None
    return proc


def stop(proc, timeout: float = 30.0) -> None:
    """Stop a server from :func:`start`: SIGTERM (it finishes the jobs in flight), then SIGKILL after ``timeout`` s."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
