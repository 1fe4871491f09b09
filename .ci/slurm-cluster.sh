#!/usr/bin/env bash
# A real single-node SLURM cluster on loopback with fake GPUs, for testing the gpu-cluster profile.
#
#   .ci/slurm-cluster.sh install      apt-get the Debian packages (munge slurmctld slurmd slurm-client) if missing
#   .ci/slurm-cluster.sh start DIR    start munged, slurmctld, slurmd with everything (config, state, logs, PID
#                                     files) under DIR; prints and writes DIR/env (`export SLURM_CONF=...`)
#   .ci/slurm-cluster.sh stop DIR     cancel this cluster's jobs, then stop exactly the daemons started in DIR,
#                                     by their recorded PIDs
#
# Nothing outside DIR is touched: /etc/slurm and /etc/munge stay as they are, and a system munged/slurm keeps running.
# Client commands (sbatch, squeue, ...) reach this cluster through SLURM_CONF=DIR/slurm.conf; munge through the socket
# named in its AuthInfo. Daemons listen on 127.0.0.1 only, on free ports (override: SLURM_TEST_CTLD_PORT,
# SLURM_TEST_SLURMD_PORT). The node pretends to be a GPU node: GPUs are symlinks to /dev/null, and its CPU/memory
# figures are configured (SLURM_TEST_CPUS, SLURM_TEST_MEM_MB, SLURM_TEST_GPUS) rather than detected
# (SlurmdParameters=config_overrides), so a production profile's requests are accepted as they are.
# Exit status 77 means "cannot run here" (not root, no apt, packages missing): callers skip.
# Every wait is bounded. What each setting is for: docs/cluster.md, "The SLURM test".
set -euo pipefail

PACKAGES=(munge slurmctld slurmd slurm-client)
WAIT_S=${SLURM_TEST_WAIT_S:-30}

die() { echo "slurm-cluster: $*" >&2; exit 1; }
cannot() { echo "slurm-cluster: cannot run here: $*" >&2; exit 77; }

have_binaries() { [ -x /usr/sbin/munged ] && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && command -v sbatch >/dev/null; }

install() {
  have_binaries && return 0
  [ "$(id -u)" = 0 ] || cannot "SLURM/munge are not installed and this is not root (apt-get install ${PACKAGES[*]})"
  command -v apt-get >/dev/null || cannot "SLURM/munge are not installed and there is no apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # The cached package lists usually suffice; update them only when that fails. Bounded: a broken mirror fails, not hangs.
  timeout 200 apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 ||
    { timeout 200 apt-get update -qq >/dev/null 2>&1 &&
      timeout 200 apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1; } ||
    cannot "apt-get install ${PACKAGES[*]} failed"
  have_binaries || cannot "packages installed but binaries missing"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start-stop-daemon keeps the daemon in the foreground (-D / -F) in the background and writes its real PID.
launch() { # name exe args...
  local name=$1 exe=$2
  shift 2
  start-stop-daemon --start --background --make-pidfile --pidfile "$DIR/pids/$name.pid" \
    --output "$DIR/log/$name.out" --exec "$exe" -- "$@"
}

wait_for() { # seconds description command...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

node_idle() { [ "$(timeout 5 sinfo -h -N -o %t 2>/dev/null | head -1)" = idle ]; }

# Jobs run `srun ... snakemake` inside their allocation, and the jobstep plugin strips SLURM_* variables (SLURM_CONF
# too) from that srun's environment, so srun finds the config only at the compiled-in default path. Point that path
# at this cluster's config with a symlink: only when nothing else is there (a stale link of an earlier test cluster
# whose directory is gone is replaced), and removed again by stop.
SYSTEM_CONF=/etc/slurm/slurm.conf
link_system_conf() {
  if [ -L "$SYSTEM_CONF" ] && [ ! -e "$SYSTEM_CONF" ]; then
    rm -f "$SYSTEM_CONF"
  fi
  if [ -e "$SYSTEM_CONF" ] || [ -L "$SYSTEM_CONF" ]; then
    stop
    cannot "$SYSTEM_CONF exists ($(readlink -f "$SYSTEM_CONF")): a real or another test SLURM configuration is in place"
  fi
  mkdir -p "$(dirname "$SYSTEM_CONF")"
  ln -s "$DIR/slurm.conf" "$SYSTEM_CONF"
}

unlink_system_conf() {
  if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$DIR/slurm.conf" ]; then
    rm -f "$SYSTEM_CONF"
  fi
}

start() {
  [ "$(id -u)" = 0 ] || cannot "the test cluster runs its daemons as root"
  install
  [ ! -e "$DIR/pids" ] || die "$DIR already holds a cluster (stop it first)"
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  mkdir -p "$DIR"/{pids,log,munge,state,spool,dev}
  chmod 700 "$DIR" "$DIR/munge"
  local host ctld_port slurmd_port cpus mem gpus
  host=$(hostname -s)
  ctld_port=${SLURM_TEST_CTLD_PORT:-$(free_port)}
  slurmd_port=${SLURM_TEST_SLURMD_PORT:-$(free_port)}
  cpus=${SLURM_TEST_CPUS:-16}
  mem=${SLURM_TEST_MEM_MB:-131072}
  gpus=${SLURM_TEST_GPUS:-2}

  # munge: a fresh key, its own socket; --force because it runs as root.
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/munge.key"
  launch munged /usr/sbin/munged -F --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --log-file="$DIR/log/munged.log" --pid-file="$DIR/munge/munged.own.pid" --seed-file="$DIR/munge/munged.seed"
  wait_for 10 munge test -S "$DIR/munge/munge.socket" || die "munged did not start: $(tail -5 "$DIR/log/munged.log" 2>&1)"

  # Fake GPUs: gres File= entries must be device-like; symlinks to /dev/null pass, plain files do not.
  local i files=()
  for ((i = 0; i < gpus; i++)); do
    ln -sf /dev/null "$DIR/dev/nvidia$i"
  done
  cat >"$DIR/gres.conf" <<EOF
AutoDetect=off
NodeName=$host Name=gpu File=$DIR/dev/nvidia[0-$((gpus - 1))]
EOF
  cat >"$DIR/slurm.conf" <<EOF
# Test cluster written by .ci/slurm-cluster.sh; see docs/cluster.md.
ClusterName=neucodec-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
# Listen on 127.0.0.1 only.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/state/slurmctld.own.pid
SlurmdPidFile=$DIR/spool/slurmd.own.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd, no cgroups here.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default a job that asks for no memory takes the whole node and blocks the next one.
DefMemPerCPU=1000
# Finished jobs stay visible to squeue (the test's status command and its assertions).
MinJobAge=600
ReturnToService=2
# The node's CPUs/memory are what this file says (a GPU node), not what this machine has.
SlurmdParameters=config_overrides
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$gpus State=UNKNOWN
PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  echo "export SLURM_CONF=$DIR/slurm.conf" >"$DIR/env"
  link_system_conf
  export SLURM_CONF=$DIR/slurm.conf

  launch slurmctld /usr/sbin/slurmctld -D -i -f "$SLURM_CONF"
  wait_for "$WAIT_S" slurmctld timeout 5 scontrol ping ||
    die "slurmctld did not answer within ${WAIT_S}s: $(tail -5 "$DIR/log/slurmctld.log" 2>&1)"
  launch slurmd /usr/sbin/slurmd -D -f "$SLURM_CONF" -N "$host"
  if ! wait_for "$WAIT_S" slurmd node_idle; then
    timeout 5 scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    wait_for 10 slurmd node_idle ||
      die "node $host not idle within ${WAIT_S}s: $(timeout 5 sinfo -N 2>&1; tail -5 "$DIR/log/slurmd.log" 2>&1)"
  fi
  cat "$DIR/env"
}

stop_one() { # name exe
  local pidfile="$DIR/pids/$1.pid"
  [ -f "$pidfile" ] || return 0
  # Only the process recorded in the PID file, and only if it still runs that executable; TERM, then KILL.
  start-stop-daemon --stop --quiet --pidfile "$pidfile" --exec "$2" --retry TERM/10/KILL/5 >/dev/null 2>&1 || true
  rm -f "$pidfile"
}

stop() {
  [ -d "$DIR" ] || return 0
  DIR=$(cd "$DIR" && pwd)
  if [ -f "$DIR/pids/slurmctld.pid" ]; then
    export SLURM_CONF=$DIR/slurm.conf
    # Jobs of this cluster only (this SLURM_CONF); their slurmstepd exit with them.
    timeout 10 scancel --full --state=RUNNING,PENDING,SUSPENDED --user="$(id -un)" >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 15))
    while [ -n "$(timeout 5 squeue -h -t RUNNING,COMPLETING 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
  fi
  stop_one slurmd /usr/sbin/slurmd
  stop_one slurmctld /usr/sbin/slurmctld
  stop_one munged /usr/sbin/munged
  unlink_system_conf
  rmdir "$DIR/pids" 2>/dev/null || true
}

case "${1:-}" in
  install) install ;;
  start) [ -n "${2:-}" ] || die "usage: $0 start DIR"; DIR=$2; start ;;
  stop) [ -n "${2:-}" ] || die "usage: $0 stop DIR"; DIR=$2; stop ;;
  *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
