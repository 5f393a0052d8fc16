#!/usr/bin/env bash
# Start the localhost test cluster: munged, slurmctld and two slurmd (n1, n2) on 127.0.0.1.
#   bash slurm/start.sh [STATE_DIR]      (default: $PRETRAIN_SLURM_STATE or /tmp/pretrain-slurm)
# Idempotent: a cluster already answering on this state dir is left alone. Prints the line
#   export SLURM_CONF=STATE_DIR/slurm.conf
# that points sbatch/squeue/scontrol at it. Ports: PRETRAIN_SLURMCTLD_PORT (16817) and
# PRETRAIN_SLURMD_PORTS ("17001 17002").
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state=${1:-${PRETRAIN_SLURM_STATE:-/tmp/pretrain-slurm}}
ctld_port=${PRETRAIN_SLURMCTLD_PORT:-16817}
read -r n1_port n2_port <<<"${PRETRAIN_SLURMD_PORTS:-17001 17002}"
conf=$state/slurm.conf
export SLURM_CONF=$conf

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

for cmd in slurmctld slurmd scontrol; do
    command -v "$cmd" >/dev/null || { echo "start.sh: $cmd missing; run slurm/install.sh" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "start.sh: the test cluster runs its daemons as root" >&2; exit 1; }

if alive "$state/run/slurmctld.pid" && alive "$state/run/slurmd-n1.pid" \
    && alive "$state/run/slurmd-n2.pid" && scontrol ping >/dev/null 2>&1; then
    echo "start.sh: cluster already running in $state"
    echo "export SLURM_CONF=$conf"
    exit 0
fi
"$here/stop.sh" "$state" >/dev/null 2>&1 || true

mkdir -p "$state"/{ctld,spool,run,log}
sed -e "s|@STATE@|$state|g" -e "s|@CTLD_PORT@|$ctld_port|g" -e "s|@N1_PORT@|$n1_port|g" \
    -e "s|@N2_PORT@|$n2_port|g" -e "s|@CPUS@|$(nproc)|g" "$here/slurm.conf.in" >"$conf"

# munge: one daemon per machine, shared by every Slurm daemon and client.
if ! pgrep -x munged >/dev/null; then
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
fi

slurmctld -f "$conf" -c            # -c: start with an empty queue
for _ in $(seq 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
slurmd -f "$conf" -N n1
slurmd -f "$conf" -N n2

# Wait until both nodes accept work.
for _ in $(seq 100); do
    idle=$(sinfo -h -N -t idle,mix,alloc -o %N 2>/dev/null | sort -u | wc -l)
    [ "$idle" -ge 2 ] && break
    sleep 0.2
done
if [ "$idle" -lt 2 ]; then
    echo "start.sh: nodes did not come up; see $state/log" >&2
    sinfo -N >&2 || true
    exit 1
fi
echo "start.sh: cluster up in $state (nodes n1 n2, partition debug)"
echo "export SLURM_CONF=$conf"
