#!/usr/bin/env bash
# Install a single-node SLURM (Debian's slurm-wlm + munge) so that
# tests/test_slurm.py can run the Snakemake workflow through the real
# snakemake-executor-plugin-slurm against a real slurmctld/slurmd.
#
# Contract (relied on by .ci/run):
#   * idempotent: if the binaries are already there it does nothing;
#   * when it cannot install (not root, no apt-get, apt failure) it prints
#     why and then: under CI (CI=true, as .ci/run is started) exits 1, so the
#     run fails with the reason instead of going green with the SLURM tests
#     skipped; elsewhere exits 0 and the SLURM tests SKIP with the reason
#     (tests/cluster/slurm_cluster.py:require_slurm(), which also FAILS them
#     under CI).
#   * does not start any daemon: the test fixture (tests/slurm_cluster.py)
#     starts munged/slurmctld/slurmd itself and stops them by PID.
set -u

log() { echo "[install-slurm] $*"; }

case "$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')" in
    1|true|yes) IN_CI=1 ;;
    *) IN_CI=0 ;;
esac

# Cannot install: fatal under CI, a skip elsewhere.
give_up() {
    log "$1"
    if [ "$IN_CI" = 1 ]; then
        log "CI=true: failing the run (a CI run must exercise the SLURM tests, not skip them)."
        exit 1
    fi
    log "The SLURM integration tests will be SKIPPED."
    exit 0
}

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
    give_up "not root: cannot install slurm-wlm/munge (missing:$missing)."
fi
if ! command -v apt-get >/dev/null 2>&1; then
    give_up "apt-get not found: cannot install slurm-wlm/munge (missing:$missing)."
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
# Package lists may be absent on a fresh machine: update first.
if ! apt-get $APT_LOCK_WAIT update -qq; then
    give_up "apt-get update failed."
fi
if ! apt-get $APT_LOCK_WAIT install -y -qq --no-install-recommends slurm-wlm munge >/tmp/install-slurm.apt.log 2>&1; then
    tail -n 30 /tmp/install-slurm.apt.log
    give_up "apt-get install failed."
fi
for b in $NEEDED_BINARIES; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || give_up "apt-get succeeded but $b is still missing."
done
log "installed: slurmd $(dpkg-query -W -f='${Version}' slurmd 2>/dev/null), $(munged --version 2>/dev/null | head -n1)"
exit 0
