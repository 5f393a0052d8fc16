#!/usr/bin/env bash
# Install Slurm (slurm-wlm) and munge from Debian's packages where they are missing.
# Idempotent: does nothing when sbatch, slurmctld, slurmd and munged are already on PATH.
set -euo pipefail

need=()
for cmd in sbatch slurmctld slurmd; do
    command -v "$cmd" >/dev/null 2>&1 || need+=(slurm-wlm)
done
command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ] || need+=(munge)
if [ ${#need[@]} -eq 0 ]; then
    echo "slurm/install.sh: slurm-wlm and munge already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "slurm/install.sh: need root to apt-get install ${need[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm/install.sh: no apt-get here; install slurm-wlm and munge by hand" >&2
    exit 1
fi
mapfile -t pkgs < <(printf '%s\n' "${need[@]}" | sort -u)
echo "slurm/install.sh: installing ${pkgs[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
echo "slurm/install.sh: installed slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm)"
