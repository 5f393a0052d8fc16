#!/usr/bin/env bash
# Stop the localhost test cluster's slurmd and slurmctld (started by slurm/start.sh).
#   bash slurm/stop.sh [STATE_DIR]
# munged is left running: it is a machine-wide service other clients may use.
set -uo pipefail

state=${1:-${PRETRAIN_SLURM_STATE:-/tmp/pretrain-slurm}}
stop_pid() {
    local pidfile=$1 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
}
stop_pid "$state/run/slurmd-n1.pid"
stop_pid "$state/run/slurmd-n2.pid"
stop_pid "$state/run/slurmctld.pid"
echo "stop.sh: cluster in $state stopped"
