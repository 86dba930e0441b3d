"""A throw-away, single-node, *real* SLURM cluster for integration tests.

This is a helper module imported by tests (``tests/test_slurm.py``); it is not
a test file itself.  It gives:

* :func:`slurm_available` -- ``(ok, reason)``, and :func:`require_slurm`, which
  skips with that reason when root / the Debian packages are missing
  (``.ci/install-slurm.sh`` installs them) and FAILS with it under ``CI=true``;
* :func:`slurm_cluster` -- a context manager that starts munged, slurmctld and
  slurmd from Debian's ``slurm-wlm``/``munge`` packages on this machine,
  waits for the node to be ``idle``, yields a :class:`SlurmCluster`, and on
  exit cancels leftover jobs, stops EVERY daemon it started by PID and
  removes the state it created;
* :func:`run_snakemake_with_profile` -- "run snakemake with the repository's
  SLURM profile in directory D with extra args", under ``timeout -s KILL``.
  Point it at the real workflow by passing its Snakefile / directory.

Design decisions (the WHY):

* The config goes to ``/etc/slurm/slurm.conf`` -- not to a private file named
  by ``SLURM_CONF`` -- because the executor plugin's job step removes every
  ``SLURM_*`` variable (``SLURM_CONF`` included) before its inner ``srun``;
  that ``srun`` then only finds the compiled-in default path.  An existing
  file is backed up and restored.
* munged gets a PRIVATE key, socket, pid, seed and log file in a fresh
  directory (``AuthInfo=socket=...`` in slurm.conf), so we never touch
  ``/etc/munge`` nor collide with a system munged.
* Daemons run in the foreground (``-D`` / ``-F``) as our direct children, so
  we know their PIDs without trusting pid files and stop them by PID (never by
  name: other engineers' processes may share the machine).  Each gets
  ``PR_SET_PDEATHSIG=SIGTERM`` so that, if the test process is SIGKILLed
  (CI timeout), the kernel still stops them.
* No cgroups (``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``):
  there is no systemd and containers usually do not delegate cgroups.
* No slurmdbd: ``sacct`` cannot work, so the plugin must use
  ``--slurm-status-command squeue``; ``squeue`` only sees finished jobs for
  ``MinJobAge`` seconds, hence MinJobAge=300 (>> the status-check interval;
  the plugin itself silently falls back to sacct when MinJobAge <
  3 * init-seconds-before-status-checks).
* ``JobCompType=jobcomp/filetxt`` makes slurmctld append one line per finished
  job (id, name, state, cpus, node) to a text file: that is our sacct-free
  proof that jobs really went through SLURM.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILE_DIR = REPO_ROOT / "profiles" / "slurm"
SLURM_CONF = Path("/etc/slurm/slurm.conf")
PARTITION = "debug"
# Slurm's own default is 300 s; we state it explicitly because the plugin's
# squeue status route depends on it (see module docstring).
MIN_JOB_AGE = 300
# Default ports of Debian's Slurm; checked to be free before starting so a
# second cluster on the machine makes us skip instead of hijacking it.
SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818

# First line of the slurm.conf we write: lets a later run recognise a file left
# behind by a run that was SIGKILLed before it could restore the original.
CONF_MARKER = "# Written by mask-first tests/slurm_cluster.py"
MUNGE_DIR_PREFIX = "maskfirst-munge-"

_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_DAEMONS = ("munged", "slurmctld", "slurmd")
_CLIENTS = ("munge", "unmunge", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")


def _which(name: str) -> str | None:
    """shutil.which that also looks in sbin dirs (non-login root PATHs lack them)."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        cand = Path(d) / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def slurm_available() -> tuple[bool, str]:
    """Can this machine start the throw-away cluster? Returns (ok, reason).

    Checked, cheapest first: Linux, root (slurmd and the config in /etc need
    it), the Debian binaries, the munge user, snakemake + the slurm executor
    plugin, not already inside a SLURM job, ports 6817/6818 free.
    """
    if not sys.platform.startswith("linux"):
        return False, f"SLURM test cluster needs Linux (platform is {sys.platform})"
    if os.geteuid() != 0:
        return False, "SLURM test cluster needs root (slurmd, /etc/slurm/slurm.conf); not root"
    missing = [b for b in _DAEMONS + _CLIENTS if _which(b) is None]
    if missing:
        return False, (
            "SLURM/munge binaries missing: " + ", ".join(missing)
            + " -- run `bash .ci/install-slurm.sh` (apt-get install slurm-wlm munge)"
        )
    try:
        import pwd

        pwd.getpwnam("munge")
    except KeyError:
        return False, "user 'munge' does not exist (munge package not installed properly)"
    if shutil.which("snakemake") is None:
        return False, "snakemake executable not on PATH"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return False, "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    if shutil.which("timeout") is None:
        return False, "coreutils `timeout` not found"
    if "SLURM_JOB_ID" in os.environ:
        return False, "already running inside a SLURM job; refusing to start a nested test cluster"
    busy = [p for p in (SLURMCTLD_PORT, SLURMD_PORT) if _port_in_use(p)]
    if busy:
        return False, f"port(s) {busy} already in use on 127.0.0.1 (another slurmctld/slurmd running?)"
    return True, "ok"


def require_slurm() -> None:
    """Skip (developer machine) or FAIL (``CI=true``) with the reason when the cluster cannot start.

    .ci/run installs SLURM first (``.ci/install-slurm.sh`` exits non-zero under
    CI when it cannot), so under CI a missing SLURM is a broken run, never a
    green one that tested nothing.
    """
    ok, reason = slurm_available()
    if not ok:
        from conftest import skip_or_fail

        skip_or_fail(f"SLURM integration test: {reason}")


def _set_pdeathsig() -> None:
    """preexec_fn: ask the kernel to SIGTERM the child if we die (e.g. SIGKILL).

    Runs after Popen's setuid (so it is not reset by the uid change).  Best
    effort: failure only loses the safety net, not functionality.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # pragma: no cover - best effort
        pass


@dataclass
class SlurmCluster:
    """What a test needs to know about the running cluster."""

    workdir: Path
    node_name: str
    partition: str
    cpus: int
    real_memory_mb: int
    min_job_age: int
    slurmctld_log: Path
    slurmd_log: Path
    jobcomp_log: Path
    # name -> PID of every daemon we started (munged, slurmctld, slurmd)
    pids: dict[str, int] = field(default_factory=dict)
    # filled in on exit: daemons that needed SIGKILL, leftover slurmstepd PIDs
    teardown_notes: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Environment for client commands / snakemake: without SLURM_* vars.

        The cluster is found through /etc/slurm/slurm.conf (see module doc);
        inherited SLURM_* (from a surrounding allocation or a user's shell)
        could point clients elsewhere or add options to sbatch.
        """
        return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}

    def run(self, *cmd: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sinfo, squeue, scontrol...) and capture text."""
        return subprocess.run(
            [_which(cmd[0]) or cmd[0], *cmd[1:]],
            capture_output=True, text=True, timeout=timeout, check=check, env=self.env(),
        )

    def jobcomp_records(self) -> list[dict[str, str]]:
        """Parse slurmctld's job-completion log (jobcomp/filetxt): one dict per finished job."""
        if not self.jobcomp_log.exists():
            return []
        records = []
        for line in self.jobcomp_log.read_text().splitlines():
            # Format: 'JobId=12 UserId=root(0) ... Name=foo JobState=COMPLETED ...'
            # values never contain spaces except WorkDir/Name in odd cases; keys are
            # CamelCase words followed by '='.
            rec = dict(re.findall(r"(\w+)=(\S*)", line))
            if rec:
                records.append(rec)
        return records

    def daemons_alive(self) -> dict[str, bool]:
        return {name: _pid_alive(pid) for name, pid in self.pids.items()}


def _pid_alive(pid: int) -> bool:
    """True if PID exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _proc_starttime_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def slurm_processes_started_after(
    start_ticks: int, names: Sequence[str] = ("munged", "slurmctld", "slurmd", "slurmstepd")
) -> dict[int, str]:
    """PIDs of munged/slurm* processes whose start time is >= start_ticks.

    Used to find slurmstepd processes (double-forked by slurmd, so not our
    children) that belong to OUR cluster: they can only have started after
    it.  Identifies by the executable basename of /proc/PID/exe, then kills
    (elsewhere) by PID -- never by name.
    """
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            continue
        exe = exe.replace(" (deleted)", "")
        if exe in names:
            st = _proc_starttime_ticks(pid)
            if st is not None and st >= start_ticks and _pid_alive(pid):
                found[pid] = exe
    return found


def _now_ticks() -> int:
    """Current time in /proc/PID/stat starttime units (clock ticks since boot)."""
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return int(uptime * os.sysconf("SC_CLK_TCK"))


def _node_hardware() -> tuple[str, str, int, int]:
    """(node name, layout string, cpus, RealMemory MB) from `slurmd -C`.

    Copying slurmd's own view of sockets/cores/threads avoids the node being
    put in INVAL/DRAIN for a layout mismatch.
    """
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    line = out.splitlines()[0]
    kv = dict(re.findall(r"(\w+)=(\S+)", line))
    layout = " ".join(
        f"{k}={kv[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore") if k in kv
    )
    return kv["NodeName"], layout, int(kv["CPUs"]), int(kv["RealMemory"])


def _write_slurm_conf(path: Path, *, workdir: Path, munge_socket: Path, node: str, layout: str,
                      real_memory_mb: int) -> str:
    state = workdir / "state"
    logs = workdir / "log"
    text = f"""\
{CONF_MARKER} for a throw-away one-node test
# cluster; the original file (if any) is restored when the test ends.
ClusterName=maskfirst-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={SLURMCTLD_PORT}
SlurmdPort={SLURMD_PORT}
# Run everything as root: a test cluster, state dirs are ours.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Private munged (own key/socket), see slurm_cluster.py docstring.
AuthInfo=socket={munge_socket}
StateSaveLocation={state}/slurmctld
SlurmdSpoolDir={state}/slurmd
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={logs}/slurmctld.log
SlurmdLogFile={logs}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd / no delegated cgroups in containers -> no cgroup plugins.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# cons_tres + CR_Core_Memory: jobs get cores AND memory, so --mem and
# --cpus-per-task from the plugin are enforced like on a real cluster.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
# No slurmdbd: sacct cannot work, hence squeue as the plugin's status command.
AccountingStorageType=accounting_storage/none
# sacct-free evidence that jobs ran: one line per finished job.
JobCompType=jobcomp/filetxt
JobCompLoc={logs}/jobcomp.txt
# Finished jobs stay visible in squeue/scontrol this long (s): must exceed
# the plugin's status-check interval, see MIN_JOB_AGE.
MinJobAge={MIN_JOB_AGE}
ReturnToService=2
MailProg=/bin/true
KillWait=5
InactiveLimit=0
SlurmdTimeout=60
NodeName={node} NodeAddr=127.0.0.1 {layout} RealMemory={real_memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def _take_over_slurm_conf(notes: list[str]) -> Path | None:
    """Move the current /etc/slurm/slurm.conf aside; return the backup path (or None).

    If the current file is OURS (a SIGKILLed earlier run never restored it),
    it is not worth keeping: the real original is then the newest
    slurm.conf.maskfirst-backup-* left by that run, if any.
    """
    backups = sorted(SLURM_CONF.parent.glob("slurm.conf.maskfirst-backup-*"), key=lambda p: p.stat().st_mtime)
    ours = SLURM_CONF.is_file() and SLURM_CONF.read_text(errors="replace").startswith(CONF_MARKER)
    target = SLURM_CONF.with_name(f"slurm.conf.maskfirst-backup-{os.getpid()}")
    if ours:
        notes.append(f"found stale test {SLURM_CONF} from an interrupted run; replaced it")
        SLURM_CONF.unlink()
        if backups:
            os.replace(backups[-1], target)
            return target
        return None
    if SLURM_CONF.exists() or SLURM_CONF.is_symlink():
        os.rename(SLURM_CONF, target)
        return target
    return None


def _remove_stale_munge_dirs(notes: list[str]) -> None:
    """Delete /tmp/maskfirst-munge-* dirs of earlier runs whose munged is gone."""
    for d in Path("/tmp").glob(MUNGE_DIR_PREFIX + "*"):
        try:
            pid = int((d / "munged.pid").read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is None or not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            notes.append(f"removed stale {d}")


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"<{path}: {e}>"


def _wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _stop_pid(proc: subprocess.Popen, name: str, notes: list[str], grace: float = 10.0) -> None:
    """SIGTERM, wait `grace` s, then SIGKILL -- by PID of a child we started."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        notes.append(f"{name} (pid {proc.pid}) ignored SIGTERM for {grace}s; sent SIGKILL")
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def slurm_cluster(workdir: str | os.PathLike, start_timeout: float = 60.0) -> Iterator[SlurmCluster]:
    """Start a one-node SLURM cluster, yield a SlurmCluster, tear everything down.

    `workdir` receives state/ (removed on exit) and log/ (kept: pytest's
    tmp_path cleans it, and the logs are what you want when a test fails).
    Raises RuntimeError with daemon log tails if the node does not get idle.
    """
    ok, reason = slurm_available()
    if not ok:
        raise RuntimeError(f"cannot start SLURM test cluster: {reason}")

    workdir = Path(workdir).resolve()
    state = workdir / "state"
    logs = workdir / "log"
    for d in (state / "slurmctld", state / "slurmd", logs):
        d.mkdir(parents=True, exist_ok=True)

    start_ticks = _now_ticks()
    procs: dict[str, subprocess.Popen] = {}
    notes: list[str] = []
    conf_backup: Path | None = None
    conf_taken = False
    created_conf_dir = False
    munge_dir: Path | None = None
    cluster: SlurmCluster | None = None
    env_clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}

    try:
        # ---- munge: private key + socket in a dir the munge user owns. ----
        # Not under workdir: pytest's tmp dirs are 0700 root, and munged
        # (running as 'munge') must reach its key/socket and refuses
        # group/world-writable dirs.
        import pwd

        mu = pwd.getpwnam("munge")
        _remove_stale_munge_dirs(notes)
        munge_dir = Path(tempfile.mkdtemp(prefix=MUNGE_DIR_PREFIX, dir="/tmp"))
        os.chown(munge_dir, mu.pw_uid, mu.pw_gid)
        # 0711: munged insists the socket's directory is executable by all
        # ("Socket is inaccessible") and writable by nobody but its owner.
        os.chmod(munge_dir, 0o711)
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chown(key, mu.pw_uid, mu.pw_gid)
        os.chmod(key, 0o400)
        munge_socket = munge_dir / "munge.socket"

        # ---- slurm.conf at the compiled-in default path (see docstring). ----
        node, layout, cpus, mem_total = _node_hardware()
        # A little below what slurmd measures: a RealMemory above the measured
        # value puts the node in INVAL state.
        real_memory = max(256, int(mem_total * 0.95))
        if not SLURM_CONF.parent.exists():
            created_conf_dir = True
        conf_backup = _take_over_slurm_conf(notes)
        conf_taken = True  # from here on, /etc/slurm/slurm.conf is ours to restore
        _write_slurm_conf(SLURM_CONF, workdir=workdir, munge_socket=munge_socket, node=node,
                          layout=layout, real_memory_mb=real_memory)

        cluster = SlurmCluster(
            workdir=workdir, node_name=node, partition=PARTITION, cpus=cpus,
            real_memory_mb=real_memory, min_job_age=MIN_JOB_AGE,
            slurmctld_log=logs / "slurmctld.log", slurmd_log=logs / "slurmd.log",
            jobcomp_log=logs / "jobcomp.txt", teardown_notes=notes,
        )

        def spawn(name: str, argv: Sequence[str], **kw) -> subprocess.Popen:
            out = open(logs / f"{name}.stdout", "ab")
            p = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env_clean, start_new_session=True, preexec_fn=_set_pdeathsig, **kw,
            )
            out.close()
            procs[name] = p
            cluster.pids[name] = p.pid
            return p

        # ---- munged (as the munge user, foreground so its PID is ours). ----
        spawn("munged", [
            _which("munged"), "--foreground", f"--socket={munge_socket}", f"--key-file={key}",
            f"--log-file={munge_dir / 'munged.log'}", f"--pid-file={munge_dir / 'munged.pid'}",
            f"--seed-file={munge_dir / 'munged.seed'}", "--num-threads=2",
        ], user=mu.pw_uid, group=mu.pw_gid, extra_groups=[])

        def munge_works() -> bool:
            if procs["munged"].poll() is not None or not munge_socket.exists():
                return False
            cred = subprocess.run([_which("munge"), "-n", "-S", str(munge_socket)], capture_output=True, timeout=10)
            if cred.returncode != 0:
                return False
            back = subprocess.run([_which("unmunge"), "-S", str(munge_socket)], input=cred.stdout,
                                  capture_output=True, timeout=10)
            return back.returncode == 0

        if not _wait_for(munge_works, 20):
            raise RuntimeError("munged did not come up:\n" + _tail(munge_dir / "munged.log")
                               + "\n" + _tail(logs / "munged.stdout"))

        # ---- slurmctld: -D foreground, -c clear any previous state. ----
        spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-f", str(SLURM_CONF)])
        # ---- slurmd: -D foreground; node name taken from slurm.conf/hostname. ----
        spawn("slurmd", [_which("slurmd"), "-D", "-N", node, "-f", str(SLURM_CONF)])

        def node_idle() -> bool:
            for name, p in procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}")
            r = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                               timeout=10, env=env_clean)
            return r.returncode == 0 and r.stdout.strip() == "idle"

        try:
            ok_idle = _wait_for(node_idle, start_timeout, interval=0.3)
        except RuntimeError as e:
            ok_idle = False
            notes.append(str(e))
        if not ok_idle:
            sinfo = subprocess.run([_which("sinfo"), "-N", "-l"], capture_output=True, text=True, env=env_clean)
            raise RuntimeError(
                f"SLURM node did not become idle within {start_timeout}s ({'; '.join(notes)})\n"
                f"sinfo: {sinfo.stdout}{sinfo.stderr}\n"
                f"--- slurmctld.log\n{_tail(logs / 'slurmctld.log')}\n{_tail(logs / 'slurmctld.stdout')}\n"
                f"--- slurmd.log\n{_tail(logs / 'slurmd.log')}\n{_tail(logs / 'slurmd.stdout')}"
            )

        yield cluster

    finally:
        # 1. cancel whatever is still queued/running (e.g. after a failed or
        #    timed-out snakemake), so no slurmstepd outlives the cluster.
        if "slurmctld" in procs and procs["slurmctld"].poll() is None:
            try:
                ids = subprocess.run([_which("squeue"), "-h", "-o", "%i"], capture_output=True, text=True,
                                     timeout=15, env=env_clean).stdout.split()
                if ids:
                    notes.append(f"cancelled leftover jobs {ids}")
                    subprocess.run([_which("scancel"), *ids], capture_output=True, timeout=15, env=env_clean)
                    _wait_for(lambda: not subprocess.run(
                        [_which("squeue"), "-h", "-t", "PD,R,CG", "-o", "%i"], capture_output=True, text=True,
                        timeout=15, env=env_clean).stdout.strip(), 30, interval=0.5)
            except (subprocess.SubprocessError, OSError) as e:
                notes.append(f"scancel step failed: {e}")
        # 2. stop daemons by PID, in reverse dependency order.
        for name in ("slurmd", "slurmctld", "munged"):
            if name in procs:
                try:
                    _stop_pid(procs[name], name, notes)
                except Exception as e:  # keep tearing down the rest
                    notes.append(f"stopping {name} failed: {e}")
        # 3. slurmstepd is double-forked by slurmd (not our child): one that
        #    started after our cluster and outlived it is ours -> kill by PID.
        #    (Our munged/slurmctld/slurmd were handled above by their PIDs.)
        leftovers = slurm_processes_started_after(start_ticks, names=("slurmstepd",))
        for pid, exe in leftovers.items():
            notes.append(f"killed leftover {exe} pid {pid}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # 4. restore /etc/slurm/slurm.conf exactly as it was (only if we
        #    replaced it: a failure before that must not delete the original).
        try:
            if not conf_taken:
                pass
            elif conf_backup is not None:
                os.replace(conf_backup, SLURM_CONF)
            elif SLURM_CONF.exists():
                SLURM_CONF.unlink()
                if created_conf_dir:
                    try:
                        SLURM_CONF.parent.rmdir()
                    except OSError:
                        pass
        except OSError as e:
            notes.append(f"could not restore {SLURM_CONF}: {e}")
        # 5. remove state we created (keep logs/ for post-mortem).
        shutil.rmtree(state, ignore_errors=True)
        if munge_dir is not None:
            shutil.rmtree(munge_dir, ignore_errors=True)


# --------------------------------------------------------------------------
# Running snakemake through the profile
# --------------------------------------------------------------------------

def profile_overrides_for(cluster: SlurmCluster, status_seconds: int = 2) -> tuple[list[str], dict[str, str]]:
    """(extra CLI args, extra env) that adapt profiles/slurm to the test cluster.

    * Site values come through the profile's documented environment variables
      (the same path a user takes): node size from the LIVE cluster, partition
      and account left empty (the plugin then picks the default partition
      via `sinfo` and submits without -A, which is what a cluster without
      accounting needs).
    * Polling intervals are shortened on the command line (CLI beats profile):
      the profile's 30/40 s are right for a shared cluster but would make
      every test job wait ~40 s before its first status check.
    """
    env = {
        "MASK_FIRST_SLURM_PARTITION": "",
        "MASK_FIRST_SLURM_ACCOUNT": "",
        "MASK_FIRST_SLURM_NODE_CPUS": str(cluster.cpus),
        "MASK_FIRST_SLURM_NODE_MEM_MB": str(cluster.real_memory_mb),
    }
    args = [
        "--seconds-between-status-checks", str(status_seconds),
        "--slurm-init-seconds-before-status-checks", str(status_seconds),
        # keep per-job SLURM logs so a test can show/inspect them
        "--slurm-keep-successful-logs",
    ]
    return args, env


def run_snakemake_with_profile(
    directory: str | os.PathLike,
    extra_args: Sequence[str] = (),
    *,
    profile: str | os.PathLike = PROFILE_DIR,
    snakefile: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: int = 300,
    log_path: str | os.PathLike | None = None,
    workflow_profile: str | None = None,
) -> subprocess.CompletedProcess:
    """Run `snakemake --profile <profile>` in `directory`, killed after `timeout_s`.

    Wrapped in `timeout -s KILL` so a hung scheduler loop (e.g. lost jobs)
    cannot hang the test suite; jobs left in SLURM are cancelled by the
    cluster teardown.  SLURM_*/SBATCH_*/SRUN_* are removed from the
    environment (see SlurmCluster.env).  stdout+stderr are merged (Snakemake
    logs to stderr) and, if `log_path` is given, also written there.
    Returns the CompletedProcess (returncode -9/137 == killed by timeout).

    `workflow_profile`: Snakemake ALSO loads `profiles/default/` (searched
    relative to the cwd and to the Snakefile's directory) as a *workflow
    profile*, and its keys WIN over `--profile` per key (measured: a
    `cores: 1` there overrode this profile's cores).  The repository's
    profiles/default (latency-wait: 5, ...) would therefore silently replace
    the SLURM profile's values when the real workflow is run from the repo.
    Pass "none" to disable it, or a path to choose one explicitly.
    """
    directory = Path(directory).resolve()
    cmd = [
        "timeout", "-s", "KILL", str(int(timeout_s)),
        shutil.which("snakemake") or "snakemake",
        "--profile", str(Path(profile).resolve()),
        "--directory", str(directory),
    ]
    if snakefile is not None:
        cmd += ["--snakefile", str(Path(snakefile).resolve())]
    if workflow_profile is not None:
        cmd += ["--workflow-profile", str(workflow_profile)]
    cmd += list(extra_args)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    run_env.update(env or {})
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=directory, env=run_env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc.elapsed = time.monotonic() - t0  # type: ignore[attr-defined]
    if log_path is not None:
        Path(log_path).write_text(f"$ {' '.join(cmd)}\n# elapsed {proc.elapsed:.1f}s rc={proc.returncode}\n"
                                  + proc.stdout)
    return proc
