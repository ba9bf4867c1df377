#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for the tests of `--executor slurm`.
#
#   bash tests/slurm-cluster.sh start DIR   # prints the SLURM_CONF to export; exit 0 once idle
#   bash tests/slurm-cluster.sh stop DIR    # stops what start started, nothing else
#
# Needs root and Debian's slurmctld, slurmd, slurm-client and munge. Everything it writes lives
# under DIR (the configuration, state, spool, logs and pid files), so it leaves /etc alone and
# two clusters never share state. A munged already running is used, not restarted.
set -euo pipefail
action=${1:?usage: slurm-cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: slurm-cluster.sh start|stop DIR}")

stop() {
    # this cluster's jobs first: a job step outlives a stopped slurmd
    if [[ -f $dir/slurmctld.pid ]] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
        SLURM_CONF=$dir/slurm.conf scancel --full --user=root 2>/dev/null || true
        for _ in $(seq 100); do
            [[ -z $(SLURM_CONF=$dir/slurm.conf squeue -h 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
    for daemon in slurmd slurmctld munged; do
        if [[ -f $dir/$daemon.pid ]]; then
            pid=$(cat "$dir/$daemon.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$dir/$daemon.pid"
        fi
    done
}

if [[ $action == stop ]]; then
    stop
    exit 0
fi
[[ $action == start ]] || { echo "usage: slurm-cluster.sh start|stop DIR" >&2; exit 2; }
for tool in slurmctld slurmd munged sinfo; do
    command -v "$tool" >/dev/null || {
        echo "$tool is missing: apt-get install -y slurmctld slurmd slurm-client munge" >&2
        exit 2
    }
done
[[ $(id -u) == 0 ]] || { echo "the daemons run as root here; run as root" >&2; exit 2; }

mkdir -p "$dir/state" "$dir/spool" "$dir/log"
cpus=$(nproc)
memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=lenetbench
SlurmctldHost=localhost
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# a finished job stays visible to scontrol this long: where its end state and reason are read
MinJobAge=3600
# a job past its time limit is killed promptly, so the time-limit test stays short
KillWait=5
OverTimeLimit=0
InactiveLimit=0
NodeName=localhost CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf

trap 'stop' ERR
if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge
    munged --force --pid-file="$dir/munged.pid" 2>/dev/null || munged --force
    [[ -f $dir/munged.pid ]] || pgrep -x -n munged > "$dir/munged.pid"
fi
slurmctld
slurmd -N localhost
for _ in $(seq 100); do
    if [[ $(sinfo -h -o %t 2>/dev/null) == idle ]]; then
        echo "$SLURM_CONF"
        exit 0
    fi
    sleep 0.2
done
echo "the node did not become idle in 20 s; see $dir/log" >&2
stop
exit 1
