#!/usr/bin/env bash
# Installs SLURM's daemons and commands and MUNGE from the system's packages where they are missing
# (Debian/Ubuntu, as root): the one-node cluster of `make test-cluster` (tests/slurm_cluster.py).
set -euo pipefail
missing=0
for tool in sbatch srun scontrol sinfo slurmctld slurmd munged; do
	command -v "$tool" >/dev/null || missing=1
done
[ "$missing" = 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
	echo "install_slurm.sh: SLURM or MUNGE is missing and this is not root on a Debian/Ubuntu system:" \
		"install the packages slurm-wlm and munge" >&2
	exit 1
fi
# The packages' scripts would start system-wide daemons; the tests start their own.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 755 "$policy"
	own_policy=1
fi
trap '[ "$own_policy" = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q slurm-wlm munge || { apt-get update -q && apt-get install -y -q slurm-wlm munge; }
