"""End-to-end: a Snakemake workflow through profiles/slurm on a REAL SLURM cluster.

The cluster (munged + slurmctld + slurmd from Debian's slurm-wlm/munge) is
started on this machine by tests/slurm_cluster.py and torn down afterwards.
Install the packages with `bash .ci/install-slurm.sh` (root + apt-get); where
that is impossible the test SKIPS with the reason.

For now the workflow is a small self-contained one written into tmp_path
(3 samples, two per-sample rules in `group: "slide"`, one aggregate).
To exercise the real workflow instead, call
`run_snakemake_with_profile(<dir>, [...], snakefile=<repo>/workflow/Snakefile)`
inside the same `slurm_cluster(...)` block.

Marker: `slurm` -- register it in pyproject.toml
([tool.pytest.ini_options] markers), see the lead's notes; select/deselect
with `-m slurm` / `-m "not slurm"`.
"""

from __future__ import annotations

import re
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_cluster import (  # noqa: E402
    CONF_MARKER,
    SLURM_CONF,
    SlurmCluster,
    _now_ticks,
    profile_overrides_for,
    run_snakemake_with_profile,
    require_slurm,
    slurm_cluster,
    slurm_processes_started_after,
)

pytestmark = [pytest.mark.slurm]

SAMPLES = ["s1", "s2", "s3"]
# Each SLURM job costs ~5 s of Snakemake start-up plus status polling; the
# whole run is ~20-40 s here.  The KILL timeout only guards against hangs
# (e.g. the plugin losing jobs and polling forever).
RUN_TIMEOUT_S = 300

SNAKEFILE = textwrap.dedent(
    '''
    SAMPLES = {samples!r}

    rule all:
        input: "results/summary.txt"

    # Every rule also writes <rule>.slurm with the SLURM job id and the cpus
    # SLURM gave the step: proof from INSIDE the job that it ran under SLURM
    # and which rules were grouped into the same job.
    rule make_raw:
        output:
            data="results/{{sample}}/raw.txt",
            info="results/{{sample}}/make_raw.slurm",
        group: "slide"
        threads: 1
        resources:
            mem_mb=200,
            runtime=5,
        shell:
            "printf 'raw %s\\\\n' {{wildcards.sample}} > {{output.data}}; "
            "echo \\"${{{{SLURM_JOB_ID:-none}}}} ${{{{SLURM_CPUS_PER_TASK:-none}}}}\\" > {{output.info}}"

    rule tile:
        input: "results/{{sample}}/raw.txt"
        output:
            data="results/{{sample}}/tiles.txt",
            info="results/{{sample}}/tile.slurm",
        group: "slide"
        threads: 2
        resources:
            mem_mb=300,
            runtime=5,
        shell:
            "tr a-z A-Z < {{input}} > {{output.data}}; "
            "echo \\"${{{{SLURM_JOB_ID:-none}}}} ${{{{SLURM_CPUS_PER_TASK:-none}}}}\\" > {{output.info}}"

    rule summarize:
        input: expand("results/{{sample}}/tiles.txt", sample=SAMPLES)
        output:
            data="results/summary.txt",
            info="results/summarize.slurm",
        threads: 1
        resources:
            mem_mb=100,
            runtime=5,
        shell:
            "cat {{input}} > {{output.data}}; "
            "echo \\"${{{{SLURM_JOB_ID:-none}}}} ${{{{SLURM_CPUS_PER_TASK:-none}}}}\\" > {{output.info}}"
    '''
).format(samples=SAMPLES)


def _write_workflow(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    sf = d / "Snakefile"
    sf.write_text(SNAKEFILE)
    return sf


def _slurm_ids(path: Path) -> tuple[str, str]:
    job_id, cpus = path.read_text().split()
    return job_id, cpus


def _fail_msg(proc, cluster: SlurmCluster | None = None) -> str:
    msg = f"snakemake rc={proc.returncode} after {getattr(proc, 'elapsed', 0):.1f}s\n{proc.stdout[-6000:]}"
    if cluster is not None:
        for log in (cluster.slurmctld_log, cluster.slurmd_log):
            try:
                msg += f"\n--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-30:])
            except OSError:
                pass
    return msg


def test_workflow_runs_through_slurm_profile(tmp_path: Path) -> None:
    require_slurm()

    conf_before = SLURM_CONF.read_bytes() if SLURM_CONF.exists() else None
    wf = tmp_path / "wf"
    snakefile = _write_workflow(wf)
    t_start = time.monotonic()
    ticks_before = _now_ticks()

    with slurm_cluster(tmp_path / "cluster") as cluster:
        t_up = time.monotonic() - t_start
        args, env = profile_overrides_for(cluster)

        # ---- 1. the real run -------------------------------------------
        run1 = run_snakemake_with_profile(
            wf, args, snakefile=snakefile, env=env, timeout_s=RUN_TIMEOUT_S,
            log_path=tmp_path / "snakemake-run1.log",
        )
        assert run1.returncode == 0, _fail_msg(run1, cluster)

        # ---- 2. every output, with its content -------------------------
        for s in SAMPLES:
            assert (wf / f"results/{s}/raw.txt").read_text() == f"raw {s}\n"
            assert (wf / f"results/{s}/tiles.txt").read_text() == f"RAW {s.upper()}\n"
        assert (wf / "results/summary.txt").read_text() == "".join(f"RAW {s.upper()}\n" for s in SAMPLES)

        # ---- 3. it really went through SLURM ---------------------------
        # (a) from inside the jobs: SLURM_JOB_ID was set
        group_ids = {_slurm_ids(wf / f"results/{s}/{r}.slurm")[0] for s in SAMPLES for r in ("make_raw", "tile")}
        summ_id, summ_cpus = _slurm_ids(wf / "results/summarize.slurm")
        assert "none" not in group_ids | {summ_id}, "a rule ran outside SLURM"
        # group-components slide=4 (profile) merges the 3 samples into ONE job
        assert len(group_ids) == 1, f"expected one grouped SLURM job, got {group_ids}\n{run1.stdout[-3000:]}"
        (group_id,) = group_ids
        assert summ_id != group_id
        # the tile step got the 2 threads the rule asked for
        assert {_slurm_ids(wf / f"results/{s}/tile.slurm")[1] for s in SAMPLES} == {str(min(2, cluster.cpus))}

        # (b) from slurmctld (jobcomp/filetxt, no sacct/slurmdbd needed)
        records = {r["JobId"]: r for r in cluster.jobcomp_records()}
        for jid in (group_id, summ_id):
            assert jid in records, f"job {jid} not in slurmctld's completion log {cluster.jobcomp_log}"
            rec = records[jid]
            assert rec["JobState"] == "COMPLETED", rec
            assert rec["Partition"] == cluster.partition, rec
            # the cores:/resources: caps of the profile kept the group on the node
            assert 1 <= int(rec["ProcCnt"]) <= cluster.cpus, rec
            mem = re.search(r"mem=(\d+)M", rec["Tres"])
            assert mem and int(mem.group(1)) <= cluster.real_memory_mb, rec
        # both jobs carry the same Snakemake run id as SLURM job name
        assert records[group_id]["Name"] == records[summ_id]["Name"]
        assert re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", records[group_id]["Name"]), records[group_id]
        # (c) the plugin's SLURM log files, one per job (kept via --slurm-keep-successful-logs)
        slurm_logs = sorted(p.relative_to(wf).as_posix() for p in (wf / ".snakemake/slurm_logs").rglob("*.log"))
        assert f".snakemake/slurm_logs/rule_summarize/{summ_id}.log" in slurm_logs, slurm_logs
        # group jobs log to group_<group>_<rules>/ (here group_slide_make_raw_tile/)
        assert any(p.startswith(".snakemake/slurm_logs/group_slide") and p.endswith(f"/{group_id}.log")
                   for p in slurm_logs), slurm_logs
        # (d) and Snakemake itself reported the submissions
        assert re.search(rf"submitted with SLURM jobid {group_id}\b", run1.stdout), run1.stdout[-3000:]
        assert re.search(rf"submitted with SLURM jobid {summ_id}\b", run1.stdout), run1.stdout[-3000:]

        # ---- 4. a second run has nothing to do --------------------------
        # (slurmctld 22.05 writes each finished job twice to jobcomp.txt: compare ids)
        job_ids_before = set(records)
        dry = run_snakemake_with_profile(wf, args + ["-n"], snakefile=snakefile, env=env, timeout_s=120,
                                         log_path=tmp_path / "snakemake-dryrun.log")
        assert dry.returncode == 0, _fail_msg(dry)
        assert "Nothing to be done" in dry.stdout, dry.stdout[-3000:]
        run2 = run_snakemake_with_profile(wf, args, snakefile=snakefile, env=env, timeout_s=120,
                                          log_path=tmp_path / "snakemake-run2.log")
        assert run2.returncode == 0, _fail_msg(run2, cluster)
        assert "Nothing to be done" in run2.stdout, run2.stdout[-3000:]
        assert "submitted with SLURM jobid" not in run2.stdout
        assert {r["JobId"] for r in cluster.jobcomp_records()} == job_ids_before, "second run submitted jobs"
        assert cluster.run("squeue", "-h", "-t", "PD,R,CG").stdout.strip() == ""

        pids = dict(cluster.pids)
        timings = (f"cluster up {t_up:.1f}s, run1 {run1.elapsed:.1f}s, dry-run {dry.elapsed:.1f}s, "
                   f"run2 {run2.elapsed:.1f}s")

    # ---- 5. every daemon we started is gone, config restored -----------
    t_total = time.monotonic() - t_start
    assert not any(cluster.daemons_alive().values()), (pids, cluster.daemons_alive())
    leftovers = slurm_processes_started_after(ticks_before)
    assert leftovers == {}, f"SLURM/munge processes left running: {leftovers}"
    conf_after = SLURM_CONF.read_bytes() if SLURM_CONF.exists() else None
    assert conf_after is None or not conf_after.startswith(CONF_MARKER.encode()), f"test {SLURM_CONF} left behind"
    if conf_before is None or not conf_before.startswith(CONF_MARKER.encode()):  # else: stale file of a killed run
        assert conf_after == conf_before, f"{SLURM_CONF} not restored"
    assert not (tmp_path / "cluster" / "state").exists()
    assert not any("killed" in n or "SIGKILL" in n for n in cluster.teardown_notes), cluster.teardown_notes
    print(f"\n[slurm] {timings}, total with teardown {t_total:.1f}s; daemons {pids} stopped")
