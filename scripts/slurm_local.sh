#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for the length of one command (`make test-slurm`):
#
#   scripts/slurm_local.sh <command> [args...]
#
# Installs slurm-wlm and munge with apt-get when missing (needs root), writes a slurm.conf and a munge
# key into a fresh temporary folder (SLURM_CONF points there; /etc/slurm and /etc/munge are never
# touched), starts munged, slurmctld and slurmd in the foreground as background children (so their
# process ids are exactly known), waits until the node is idle, runs the command with SLURM_CONF,
# SLURM_LOCAL_DIR and PATH set, then cancels what is left in the queue and stops exactly the daemons
# it started, by pid, also when the command or the start fails. Exits with the command's status.
#
# Job state without slurmdbd: submitit polls `sacct -o JobID,State,NodeList --parsable2 -j <id>`, and
# sacct needs accounting storage (slurmdbd and a database) or fails with "Slurm accounting storage is
# disabled"; submitit then treats every job as still running, so a job cancelled or killed before it
# writes its result would be waited for forever. Here the controller writes a job-completion log
# (JobCompType=jobcomp/filetxt) and $SLURM_LOCAL_DIR/bin/sacct, first on PATH, is
# scripts/slurm_local_sacct.py: it answers submitit's query from the controller's job table
# (`scontrol show job`) and that log, so the states are the scheduler's own (COMPLETED, CANCELLED,
# PENDING, ...), read without an accounting database (`sacct --completion` would read the log but
# cannot parse array jobs in 22.05). A real cluster runs slurmdbd and its own sacct.
#
# Environment: SLURM_LOCAL_PORT (controller port, default 6817; slurmd uses the next one),
# SLURM_LOCAL_KEEP=1 keeps the temporary folder (logs) after the run.
set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: $0 <command> [args...]" >&2
    exit 2
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: $0 starts slurmctld/slurmd/munged and installs packages: run it as root" >&2
    exit 2
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "[slurm-local] installing slurm-wlm and munge (apt-get)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
    echo "[slurm-local] installed in ${SECONDS} s"
    # The packages' own services (if a service manager started them) are not ours: we start our own
    # daemons on their own config, socket and ports below.
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
PORT=${SLURM_LOCAL_PORT:-6817}
DIR=$(mktemp -d /tmp/slurm-local.XXXXXX)
chmod 755 "$DIR" # munged runs as the munge user and must reach its folder
mkdir -p "$DIR"/{state,spool,log,bin,munge}
PIDS=()
NAMES=()

log() { echo "[slurm-local] $*"; }

stop() {
    local status=$? pid name i
    set +e
    if [ -n "${SLURM_CONF:-}" ] && [ ${#PIDS[@]} -ge 2 ]; then
        # Jobs still in the queue would leave their slurmstepd (children of slurmd) behind.
        local left
        left=$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')
        if [ -n "${left// /}" ]; then
            log "cancelling jobs left in the queue: $left"
            scancel $left 2>/dev/null
            for _ in $(seq 1 30); do
                [ -z "$(timeout 10 squeue -h -o %i 2>/dev/null)" ] && break
                sleep 1
            done
        fi
    fi
    # Stop in reverse start order: slurmd, slurmctld, munged.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[$i]} name=${NAMES[$i]}
        kill "$pid" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name ($pid) did not stop on SIGTERM: SIGKILL"
            kill -9 "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    local alive=()
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && alive+=("$pid")
    done
    log "stopped the daemons started here: ${PIDS[*]:-none} (${NAMES[*]:-})"
    log "pgrep -a slurm:"
    pgrep -a slurm | sed 's/^/    /'
    log "pgrep -a munge:"
    pgrep -a munge | sed 's/^/    /'
    if [ ${#alive[@]} -gt 0 ]; then
        log "error: still running: ${alive[*]}"
        status=1
    else
        log "none of ${PIDS[*]:-the started pids} is running"
    fi
    if [ "${SLURM_LOCAL_KEEP:-0}" = 1 ]; then
        log "kept $DIR"
    else
        rm -rf "$DIR"
    fi
    exit "$status"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# munge: a fresh key, socket, pid and log files in $DIR/munge, run as the munge user (munged refuses
# keys that others can read and a socket folder that others cannot enter: the key is 0400, owned by
# munge, in a 0755 folder).
dd if=/dev/urandom bs=1 count=1024 of="$DIR/munge/munge.key" status=none
chmod 755 "$DIR/munge"
chmod 400 "$DIR/munge/munge.key"
chown -R munge:munge "$DIR/munge"
SOCKET="$DIR/munge/munge.socket"
# setpriv switches user and execs (no fork, unlike runuser/su): $! is munged's own pid.
setpriv --reuid=munge --regid=munge --clear-groups munged --foreground --key-file="$DIR/munge/munge.key" \
    --socket="$SOCKET" --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed" >"$DIR/log/munged.out" 2>&1 &
PIDS+=($!) NAMES+=(munged)
for _ in $(seq 1 50); do
    [ -S "$SOCKET" ] && break
    sleep 0.1
done
if [ ! -S "$SOCKET" ]; then
    log "error: munged did not start:"
    cat "$DIR/log/munged.out" >&2
    exit 1
fi

cat >"$DIR/slurm.conf" <<CONF
# Written by scripts/slurm_local.sh: a one-node cluster for one test run.
ClusterName=lavalocal
SlurmctldHost=$HOST
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmUser=root
SlurmdUser=root
ReturnToService=2
# No slurmdbd: no accounting storage. Finished jobs go to a completion log that \`sacct -c\` reads.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
# A cancelled job is killed 1 s after its SIGTERM (default 30), and ended jobs stay in the
# controller's table for an hour (scripts/slurm_local_sacct.py reads their state there).
KillWait=1
MinJobAge=3600
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$DIR/slurm.conf" SLURM_LOCAL_DIR="$DIR"

# sacct from the completion log and squeue (see the header).
ln -s "$(cd "$(dirname "$0")" && pwd)/slurm_local_sacct.py" "$DIR/bin/sacct"
export PATH="$DIR/bin:$PATH"

slurmctld -D -i >"$DIR/log/slurmctld.out" 2>&1 &
PIDS+=($!) NAMES+=(slurmctld)
slurmd -D >"$DIR/log/slurmd.out" 2>&1 &
PIDS+=($!) NAMES+=(slurmd)
log "started munged, slurmctld, slurmd: pids ${PIDS[*]} (SLURM_CONF=$SLURM_CONF)"

state=""
for _ in $(seq 1 120); do
    state=$(timeout 5 sinfo -h -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.5
done
if [ "$state" != idle ]; then
    log "error: the node is not idle after 60 s (state '${state:-no answer}'); the logs:"
    tail -n 20 "$DIR"/log/*.log "$DIR"/log/*.out >&2 || true
    exit 1
fi
log "node $HOST idle: $CPUS CPUs, ${MEM_MB} MB"

set +e
"$@"
status=$?
set -e
log "command exited with $status"
exit "$status"
