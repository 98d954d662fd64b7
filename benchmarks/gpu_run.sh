#!/usr/bin/env bash
# One prepared GPU benchmark run (about 8 minutes at most on one H100/H200): the navigation speed
# targets, the throughput sweep of every learner, and the PyTorch task-loop reference on the
# same GPU. Every record is one JSON line; results go to $OUT (default: results/gpu).
#
# Prepare once on a machine with internet (the GPU image has jax, flax, optax, chex, torch,
# but not gymnax and gymnasium):
#     make gpu-wheels            # downloads them to .whl/ (git-ignored via .git/info/exclude)
# Then on the GPU machine, from the repository root:
#     bash benchmarks/gpu_run.sh
# A dry run of the script's mechanics on a CPU (minutes, small sizes):
#     OUT=/tmp/gpu_dry PYTHON=.venv/bin/python TARGET_SIZES="2 4" LEARNER_SIZES=2 TORCH_DEVICE=cpu bash benchmarks/gpu_run.sh
# Each step has its own time limit, so a slow or failing step never takes the rest with it;
# a step that fails writes its error to its log and the script goes on.
set -uo pipefail

OUT="${OUT:-results/gpu}"
TARGET_SIZES="${TARGET_SIZES:-20 1000 4096}"   # the issue's targets; smaller values make a quick dry run
LEARNER_SIZES="${LEARNER_SIZES:-1 20 1000}"   # tasks for the actor-critic and Q-learning records
TORCH_DEVICE="${TORCH_DEVICE:-cuda}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site:${PWD}${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
fi

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi -L 2>&1 || true
    "$PY" -c "import jax, torch; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')"
} 2>&1 | tee "$OUT/machine.txt"

step() {  # step NAME SECONDS COMMAND...: run COMMAND with a limit, JSON lines to $OUT/NAME.jsonl, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" > "$OUT/$name.jsonl" 2> "$OUT/$name.log"
    echo "   exit $? after ${SECONDS}s in total; $(wc -l < "$OUT/$name.jsonl") records"
}

# 1. The issue's targets: second order, navigation, 20 / 1000 / 4096 tasks (ms per meta-iteration, env-steps/s).
#    --no-flops: the FLOP count (an extra compile of an unrolled twin) is the program's, the same as on a CPU.
step targets 120 "$PY" -m experiments.benchmark_speed --meta-batch $TARGET_SIZES --order 2 --iters 20 --warmup 3 --no-flops
#    The same with the rollout's time loop unrolled 10x (each GPU loop iteration costs a host round trip).
step targets_unroll10 80 "$PY" -m experiments.benchmark_speed --meta-batch $TARGET_SIZES --order 2 --iters 20 --warmup 3 --rollout-unroll 10 --no-flops
# 2. The PyTorch task-loop reference on the same GPU, 20 tasks, both orders (the JAX side is in step 1 and 3).
step torch_gpu 60 "$PY" -m benchmarks.torch_reference --device "$TORCH_DEVICE" --meta-batch 20 --order 2 --iters 5 --warmup 1
# 3. Throughput sweep 1..4096 tasks, first and second order (pg; budget per configuration, compile included),
#    and the actor-critic and Q-learning learners at 1, 20 and 1000 tasks (their compiles alone exceed a sweep budget).
step sweep_pg 90 "$PY" -m experiments.benchmark_speed --sweep --order 1 2 --iters 10 --budget-s 12 --no-flops
step learner_ac 60 "$PY" -m experiments.benchmark_speed --learner ac --meta-batch $LEARNER_SIZES --order 2 --iters 5 --warmup 1 --no-flops
step learner_q 60 "$PY" -m experiments.benchmark_speed --learner q --task tabular_mdp --meta-batch $LEARNER_SIZES --order 2 --iters 5 --warmup 1 --no-flops
echo "done in ${SECONDS}s; results in $OUT"
