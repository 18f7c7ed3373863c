#!/usr/bin/env bash
# examples/run_slurm_pretrain.sh against a real Slurm: starts slurmctld + slurmd (Debian's
# slurm-wlm) on this machine with a generated slurm.conf in a temp dir (auth/none, no
# munge, no cgroups), runs a 2-process job through the launcher with the launch probe in
# place of primus, checks that both ranks ran inside the Slurm job and met each other,
# runs 2 MPI ranks directly with `srun --mpi=pmix` (the CPU path), and shuts Slurm down. Usage: test_slurm_launcher.sh PATH/primus_launch_probe
set -uo pipefail
PROBE=${1:?usage: test_slurm_launcher.sh PROBE}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

for tool in slurmctld slurmd srun sinfo scontrol; do
  if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$tool ]]; then
    echo "FAIL: $tool not found: slurm-wlm is not installed. Run ./setup.sh (it installs slurm-wlm)."
    exit 1
  fi
done
PATH=$PATH:/usr/sbin

WORK=$(mktemp -d /tmp/primus-slurm.XXXXXX)
CTLD_PID="" SLURMD_PID=""
cleanup() {
  [[ -n "$SLURMD_PID" ]] && kill "$SLURMD_PID" 2>/dev/null
  [[ -n "$CTLD_PID" ]] && kill "$CTLD_PID" 2>/dev/null
  for pid in $SLURMD_PID $CTLD_PID; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

HOST=$(hostname -s)
USER_NAME=$(id -un)
NODE_LINE=$(slurmd -C | head -n1)  # this machine's real CPUs/sockets/memory, as slurmd sees them
mkdir -p "$WORK/state" "$WORK/spool"
export SLURM_CONF="$WORK/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=primustest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=$USER_NAME
SlurmdUser=$USER_NAME
AuthType=auth/none
CredType=cred/none
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=primus Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
EOF

slurmctld -D -i -f "$SLURM_CONF" >"$WORK/slurmctld.out" 2>&1 &
CTLD_PID=$!
slurmd -D -f "$SLURM_CONF" -N "$HOST" >"$WORK/slurmd.out" 2>&1 &
SLURMD_PID=$!

state=""
for _ in $(seq 100); do
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1)
  [[ "$state" == idle* ]] && break
  sleep 0.2
done
if [[ "$state" != idle* ]]; then
  echo "FAIL: the Slurm node did not become idle (state '$state')"
  tail -n 20 "$WORK"/slurmctld.log "$WORK"/slurmd.log "$WORK"/*.out 2>/dev/null
  exit 1
fi
echo "slurm up: node $HOST idle"

mkdir -p "$WORK/ranks"
echo "work_group: test" >"$WORK/exp.yaml"
start=$SECONDS
EXP="$WORK/exp.yaml" NNODES=1 GPUS_PER_NODE=2 PRIMUS_LAUNCHER=env PRIMUS_BIN="$PROBE" \
  PRIMUS_PROBE_DIR="$WORK/ranks" MASTER_PORT=$(free_port) \
  timeout 90 bash "$ROOT/examples/run_slurm_pretrain.sh" lr=0.1 >"$WORK/job.log" 2>&1
code=$?
echo "job finished with exit $code after $((SECONDS - start)) s"

# The CPU path under Slurm: MPI ranks launched directly by srun through PMIx.
mkdir -p "$WORK/ranks_pmix"
PRIMUS_PROBE_DIR="$WORK/ranks_pmix" \
  timeout 60 srun --mpi=pmix -n 2 --export=ALL "$PROBE" train >"$WORK/pmix.log" 2>&1
pmix_code=$?

failed=0
for r in 0 1; do
  if grep -q "rank $r of 2 .*via srun with PMI | mpi all_reduce over 2 ranks" "$WORK/ranks_pmix/rank$r" 2>/dev/null; then
    echo "PASS srun --mpi=pmix rank $r initialised MPI and reduced with the other"
  else
    echo "FAIL srun --mpi=pmix rank $r did not report (srun exit $pmix_code)"
    cat "$WORK/pmix.log"
    failed=1
  fi
done
for r in 0 1; do
  if grep -q "rank $r of 2 .*tcp rendezvous with 2 ranks .*slurm job [0-9]" "$WORK/ranks/rank$r" 2>/dev/null; then
    echo "PASS rank $r ran inside the Slurm job: $(cat "$WORK/ranks/rank$r")"
  else
    echo "FAIL rank $r did not report"
    failed=1
  fi
done
grep -q "node rank 0 of 1, master $HOST:" "$WORK/job.log" || { echo "FAIL: the task did not derive MASTER_ADDR from the job's nodes"; failed=1; }
[[ $code -eq 0 ]] || { echo "FAIL: the job exited $code"; failed=1; }
if ((failed)); then
  echo "----- job log -----"; cat "$WORK/job.log"
  echo "----- slurmctld -----"; tail -n 30 "$WORK/slurmctld.log"
  echo "----- slurmd -----"; tail -n 30 "$WORK/slurmd.log"
  exit 1
fi
echo "2 passed, 0 failed"
