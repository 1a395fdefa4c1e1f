#!/usr/bin/env bash
# One node, P stage processes: torchrun --standalone, no restarts, one log file per rank.
#
#   launch/single_node.sh [-n NPROC] [-e ECHO_RANKS] [-l LOG_DIR] [pipelocal.run arguments...]
#
#   -n  processes (stages), default 4
#   -e  local ranks whose output also goes to the console, default 0 (e.g. 0,3; "all" for every rank)
#   -l  log folder, default logs/; rank r's stdout/stderr land in LOG_DIR/<run id>/attempt_0/r/
#
# Example: launch/single_node.sh -n 2 -e 0,1 --config configs/fmnist/pipeline_infopro_p2.yaml
set -euo pipefail
nproc=4 echo_ranks=0 log_dir=logs
while [ $# -gt 0 ]; do  # our flags first; everything after them goes to pipelocal.run
  case $1 in
    -n) nproc=$2; shift 2 ;;
    -e) echo_ranks=$2; shift 2 ;;
    -l) log_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
filter=()
[ "$echo_ranks" = all ] || filter=(--local-ranks-filter "$echo_ranks")
mkdir -p "$log_dir"
# --tee 3: each rank's stdout and stderr go to its own log file and to the console (filtered above).
exec "${PYTHON:-python3}" -m torch.distributed.run --standalone --nproc-per-node "$nproc" --max-restarts 0 \
  --log-dir "$log_dir" --tee 3 "${filter[@]}" -m pipelocal.run "$@"
