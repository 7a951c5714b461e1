#!/usr/bin/env bash
# GPU readiness in one go (< 5 minutes on one H100/H200-class GPU): capscale vs lm-eval's HF backend (and
# lm-eval's vLLM backend where vLLM is installed) on a random-init ~300M-parameter Llama in bfloat16, 240
# five-shot items (500-token contexts, 4 choices): requested tokens/s, share of the GPU's peak bf16 FLOP/s,
# which SDPA kernels accept capscale's 4-D prefix-sharing mask, SDPA vs eager attention, and the same items
# rebuilt around one fixed few-shot block (rows shared by items: results/bench/gpu/fewshot/). Then the vLLM
# sampling test (tests/test_vllm.py) when vLLM is importable. Results: results/bench/gpu/{sdpa,eager,fewshot}/.
#
#   evals/bench/gpu_bench.sh                       # on the GPU machine, from the repository root
#   DEVICE=cpu DTYPE=float32 D_MODEL=64 N_LAYERS=2 ITEMS=8 BATCHES=8 evals/bench/gpu_bench.sh /tmp/gpu  # CPU dry run
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-results/bench/gpu}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
D_MODEL=${D_MODEL:-1024}
N_LAYERS=${N_LAYERS:-16}
ITEMS=${ITEMS:-240}
BATCHES=${BATCHES:-32,128}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MODEL=$(mktemp -d)/llama
trap 'rm -rf "$(dirname "$MODEL")"' EXIT

echo "== build a random-init Llama d_model=$D_MODEL n_layers=$N_LAYERS"
python - "$MODEL" "$D_MODEL" "$N_LAYERS" <<'PY'
import sys
sys.path.insert(0, "evals/bench")
from types import SimpleNamespace
from scoring_speed import DEFAULT_TASK, build_checkpoint
from capscale.tasks.jsonl import load_jsonl_task
path, d, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
args = SimpleNamespace(vocab=8192, d_model=d, n_layers=n, max_length=2048)
print(build_checkpoint(__import__("pathlib").Path(path), load_jsonl_task(DEFAULT_TASK).items, args))
PY

VLLM_FLAG=""
if [ "$DEVICE" = cuda ] && python -c "import vllm" 2>/dev/null; then VLLM_FLAG=--lm-eval-vllm; fi
COMMON=(--model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --items "$ITEMS" --batch-sizes "$BATCHES" --threads 8)
echo "== SDPA (capscale and lm-eval HF${VLLM_FLAG:+, lm-eval vLLM})"
timeout 240 python evals/bench/scoring_speed.py "${COMMON[@]}" --attn-implementation sdpa $VLLM_FLAG --out "$OUT/sdpa"
echo "== eager attention"
timeout 120 python evals/bench/scoring_speed.py "${COMMON[@]}" --attn-implementation eager --out "$OUT/eager"
echo "== SDPA on items that open with one fixed few-shot block (rows shared by items)"
FEWSHOT=$(dirname "$MODEL")/fewshot.jsonl
python - "$MODEL" "$FEWSHOT" "$ITEMS" <<'PY'
import dataclasses, json, sys
sys.path.insert(0, "evals/bench")
from scoring_grid import grid_items
from scoring_speed import DEFAULT_TASK
from transformers import AutoTokenizer
from capscale.tasks.jsonl import load_jsonl_task
tok = AutoTokenizer.from_pretrained(sys.argv[1])
items = grid_items(load_jsonl_task(DEFAULT_TASK).items, tok, int(sys.argv[3]), 500, 4, 0, "shared")
with open(sys.argv[2], "w") as f:
    for it in items:
        f.write(json.dumps({"id": it.id, "context": it.context, "choices": list(it.choices), "gold": it.gold}) + "\n")
PY
timeout 120 python evals/bench/scoring_speed.py "${COMMON[@]}" --task "$FEWSHOT" --attn-implementation sdpa --out "$OUT/fewshot"
if [ "$DEVICE" = cuda ] && python -c "import vllm" 2>/dev/null; then
    echo "== vLLM sampling backend test"
    timeout 180 python -m pytest -q tests/test_vllm.py
fi
python - "$OUT" <<'PY'
import json, sys
for impl in ("sdpa", "eager", "fewshot"):
    r = json.load(open(f"{sys.argv[1]}/{impl}/scoring_speed.json"))
    cs, le = r["capscale"], r["lm_eval"]
    share = cs.get("share_of_peak")
    print(f"{impl:6s} capscale {cs['tokens_per_s']:>12,.0f} tok/s  lm-eval HF {le['tokens_per_s']:>12,.0f} tok/s  "
          f"{r['speedup']:.2f}x  max|d| {r['max_abs_diff']:.1e}" + (f"  capscale {share:.1%} of peak" if share else ""))
PY
