#!/usr/bin/env bash
# A single-node Slurm on this machine, without systemd: .ci/slurm.sh start|stop|status.
#
# As root, idempotent: `start` installs Debian's slurm-wlm and munge when missing, writes
# /etc/slurm/slurm.conf for one node (this host, its CPUs, most of its free memory), starts
# munged, slurmctld and slurmd in the background, and waits until the node takes jobs;
# run again, it leaves a running cluster as it is. `stop` ends the three daemons (by the pid
# files they wrote), `status` prints sinfo's line and exits 1 when the node is not up.
# The tests (tests/test_slurm.py) and .ci/run call it; docs/clusters.md says how it was made.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
STATE=/var/lib/slurm/slurmctld
SPOOL=/var/lib/slurm/slurmd
LOGS=/var/log/slurm
RUN=/run/slurm
MUNGE_RUN=/run/munge

node_up() {
    # The node takes jobs: idle, mixed or allocated (not down, drained or unknown).
    sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'
}

install() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        return
    fi
    echo "slurm.sh: installing slurm-wlm and munge (Debian packages)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    # Slurm refuses a node that has less memory than it claims: claim 3/4 of what is free.
    mem=$(awk '/MemAvailable/ {print int($2 / 1024 * 3 / 4)}' /proc/meminfo)
    mkdir -p /etc/slurm
    cat >"$CONF" <<EOF
# Written by kdsearch's .ci/slurm.sh: a one-node cluster for tests and demos.
ClusterName=kdsearch
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ReturnToService=2
KillWait=30
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

alive() {
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start() {
    install
    if alive "$RUN/slurmctld.pid" && alive "$RUN/slurmd.pid" && node_up; then
        echo "slurm.sh: already running: $(sinfo -h -o '%P %T %D %C')"
        return
    fi
    [ -f "$CONF" ] && grep -q "kdsearch's .ci/slurm.sh" "$CONF" || write_conf
    mkdir -p "$MUNGE_RUN" "$STATE" "$SPOOL" "$LOGS" "$RUN"
    chown munge:munge "$MUNGE_RUN"
    chmod 0755 "$MUNGE_RUN"
    chown slurm:slurm "$STATE" "$LOGS" "$RUN"
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    if ! alive "$MUNGE_RUN/munged.pid"; then
        su -s /bin/sh munge -c "munged --pid-file=$MUNGE_RUN/munged.pid"
    fi
    if ! alive "$RUN/slurmctld.pid"; then
        nohup slurmctld -D >>"$LOGS/slurmctld.out" 2>&1 &
    fi
    if ! alive "$RUN/slurmd.pid"; then
        nohup slurmd -D >>"$LOGS/slurmd.out" 2>&1 &
    fi
    for _ in $(seq 60); do
        if node_up; then
            echo "slurm.sh: up: $(sinfo -h -o '%P %T %D %C')"
            return
        fi
        sleep 1
    done
    echo "slurm.sh: the node did not come up in 60 s; see $LOGS/slurmctld.log and slurmd.log" >&2
    exit 1
}

stop() {
    local pidfile
    for pidfile in "$RUN/slurmd.pid" "$RUN/slurmctld.pid" "$MUNGE_RUN/munged.pid"; do
        if alive "$pidfile"; then
            kill "$(cat "$pidfile")"
        fi
    done
    echo "slurm.sh: stopped"
}

status() {
    if node_up; then
        sinfo -h -o '%P %T %D %C'
    else
        echo "slurm.sh: no node up" >&2
        exit 1
    fi
}

case "${1:-}" in
start | stop | status) "$1" ;;
*)
    echo "usage: .ci/slurm.sh start|stop|status" >&2
    exit 2
    ;;
esac
