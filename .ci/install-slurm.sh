#!/usr/bin/env bash
# Install a single-node SLURM (Debian's slurm-wlm + munge) so that
# tests/test_slurm.py can run the Snakemake workflow through the real
# snakemake-executor-plugin-slurm against a real slurmctld/slurmd.
#
# Contract (relied on by .ci/run):
#   * idempotent: if the binaries are already there it does nothing;
#   * NEVER fails the CI run: when it cannot install (not root, no apt-get,
#     apt failure) it prints why and exits 0 -- tests/test_slurm.py then
#     SKIPS with a clear reason (tests/slurm_cluster.py:slurm_available()).
#   * does not start any daemon: the test fixture (tests/slurm_cluster.py)
#     starts munged/slurmctld/slurmd itself and stops them by PID.
set -u

log() { echo "[install-slurm] $*"; }

# Everything the fixture needs.  slurm-wlm pulls slurmctld, slurmd and
# slurm-client (sbatch/squeue/sinfo/scontrol/srun); munge is the auth daemon.
NEEDED_BINARIES="munged slurmctld slurmd sbatch squeue sinfo scontrol srun"

missing=""
for b in $NEEDED_BINARIES; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing="$missing $b"
done
if [ -z "$missing" ]; then
    log "slurm + munge already installed (slurmd $(dpkg-query -W -f='${Version}' slurmd 2>/dev/null || echo '?')); nothing to do."
    exit 0
fi

if [ "$(id -u)" != "0" ]; then
    log "not root: cannot install slurm-wlm/munge (missing:$missing)."
    log "The SLURM integration test will be SKIPPED."
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "apt-get not found: cannot install slurm-wlm/munge (missing:$missing)."
    log "The SLURM integration test will be SKIPPED."
    exit 0
fi

# Debian's maintainer scripts call invoke-rc.d to start slurmctld/slurmd/munge
# right after unpacking.  We do not want that: there is no systemd here, a
# half-configured daemon started by the package would hold the ports and
# pid files, and the fixture must own every daemon it starts (to stop it by
# PID).  A policy-rc.d that exits 101 ("action forbidden") is Debian's
# documented way to stop postinst from starting services.  Only install ours
# if none exists, and remove only ours.
POLICY=/usr/sbin/policy-rc.d
our_policy=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# temporary, written by mask-first .ci/install-slurm.sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    our_policy=1
fi
cleanup() { if [ "$our_policy" = 1 ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
# Wait (up to 5 min) for a dpkg/apt lock held by another apt run on the same
# machine instead of failing at once.
APT_LOCK_WAIT="-o DPkg::Lock::Timeout=300"
log "installing slurm-wlm munge (missing:$missing) ..."
# Package lists may be absent on a fresh machine: update first.  A failure
# here is reported, not fatal (CI goes on, the test skips).
if ! apt-get $APT_LOCK_WAIT update -qq; then
    log "apt-get update failed; the SLURM integration test will be SKIPPED."
    exit 0
fi
if ! apt-get $APT_LOCK_WAIT install -y -qq --no-install-recommends slurm-wlm munge >/tmp/install-slurm.apt.log 2>&1; then
    tail -n 30 /tmp/install-slurm.apt.log
    log "apt-get install failed; the SLURM integration test will be SKIPPED."
    exit 0
fi
log "installed: slurmd $(dpkg-query -W -f='${Version}' slurmd 2>/dev/null), $(munged --version 2>/dev/null | head -n1)"
exit 0
