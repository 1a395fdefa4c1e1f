#!/usr/bin/env bash
# One node, P stages x R data-parallel replicas = P x R processes: torchrun --standalone, no restarts, one log
# file per rank. Rank = stage x R + replica: a stage's replicas are neighbours (its dp group).
#
#   launch/single_node.sh [-p STAGES] [-r REPLICAS] [-e ECHO_RANKS] [-l LOG_DIR] [pipelocal.run arguments...]
#
#   -p  pipeline stages P, default 4 (-n: the same)
#   -r  data-parallel replicas R of the pipeline, default 1 (passed on as --pipeline.replicas)
#   -e  local ranks whose output also goes to the console, default 0 (e.g. 0,3; "all" for every rank)
#   -l  log folder, default logs/; rank r's stdout/stderr land in LOG_DIR/<run id>/attempt_0/r/
#
# Examples: launch/single_node.sh -p 2 -e 0,1 --config configs/fmnist/pipeline_infopro_p2.yaml
#           launch/single_node.sh -p 4 -r 2 --model.norm=batch --pipeline.sync_batchnorm=true   # 8 GPUs
set -euo pipefail
stages=4 replicas=1 echo_ranks=0 log_dir=logs
while [ $# -gt 0 ]; do  # our flags first; everything after them goes to pipelocal.run
  case $1 in
    -p|-n) stages=$2; shift 2 ;;
    -r) replicas=$2; shift 2 ;;
    -e) echo_ranks=$2; shift 2 ;;
    -l) log_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
filter=()
[ "$echo_ranks" = all ] || filter=(--local-ranks-filter "$echo_ranks")
mkdir -p "$log_dir"
# --tee 3: each rank's stdout and stderr go to its own log file and to the console (filtered above).
exec "${PYTHON:-python3}" -m torch.distributed.run --standalone --nproc-per-node $((stages * replicas)) \
  --max-restarts 0 --log-dir "$log_dir" --tee 3 "${filter[@]}" -m pipelocal.run --pipeline.replicas="$replicas" "$@"
