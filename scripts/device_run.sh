#!/usr/bin/env bash
# One step of the GPU run on the lent machine (see outputs/gpu/PROVENANCE.md). The machine reaches no registry
# and takes at most 64 MiB per call (working tree included: about 23 MB in session 3), so SmolLM2's 94 MiB GGUF
# file travels in parts, one folder per call (.gpu/p1..pN, carried one per call; the book corpus in p1, the file's
# SHA-256 in the last) and is joined in /var/tmp; weights and checkpoints stay in /var/tmp/pa; results go to $OUT.
# Make the parts with: split -n 4 -d -a 1 smollm2.gguf part   (four, now that the tree is larger).
# Notebooks need papermill and a kernel, which the image lacks (it has matplotlib, pandas, scipy): .gpu/nbwhl holds
# `pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 (...) papermill ipykernel
# seaborn` minus numpy, packaging, typing_extensions, matplotlib, pandas and their deps, debugpy and jedi (8 MB);
# .gpu/plotwhl (matplotlib, pandas and deps, 36 MB) only for an image without them. Carry .gpu/nbwhl for `nb`.
#   bash scripts/device_run.sh stage1             part 1 + corpus; a smoke test of training on random weights
#   bash scripts/device_run.sh stage2             part 2; notebook 08 (kernel benchmark) under papermill
#   bash scripts/device_run.sh run BUDGET_S       part 3 (if carried): join; run/resume the accuracy pipeline
#   bash scripts/device_run.sh gen                generation timing of the RULER section on random weights
#   bash scripts/device_run.sh resume BUDGET_S    like run, on a fresh machine: the committed artifacts seed
#                                                 $W/artifacts (nothing overwritten), the missing units run
#   bash scripts/device_run.sh variants           issue 11: candidate kernel settings vs the tile table, both
#                                                 shapes (scripts/kernel_check.py --variants); the adopted ones
#                                                 go to $W/tiles_choice.json, which nb08 / nb09 then run with
#   bash scripts/device_run.sh nb NAME TIMEOUT_S  notebook NAME (e.g. 08_figure4b_kernels) under papermill, gpu profile
set -uo pipefail
W=/var/tmp/pa
mkdir -p "$W/work" .cache/corpora/books
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/whl/*.whl >/dev/null 2>&1
for d in nbwhl plotwhl; do  # papermill and its kernel; plotting and tables where the image lacks them
  [ -d .gpu/$d ] && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/$d/*.whl >/dev/null 2>&1
done
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 POWERATTN_SMOLLM2_GGUF=$W/smollm2.gguf
for p in .gpu/p*/; do [ -d "$p" ] && cp "$p"* "$W/"; done
[ -f "$W/books.jsonl.gz" ] && cp "$W/books.jsonl.gz" "$W/MANIFEST.json" .cache/corpora/books/ 2>/dev/null
# The parts (split -n N -d -a 1: part0..partN-1) are joined once the last call has brought gguf.sha256.
if [ ! -f "$W/smollm2.gguf" ] && [ -f "$W/gguf.sha256" ]; then
  cat "$W"/part? > "$W/smollm2.gguf"
  (cd "$W" && echo "$(cut -d' ' -f1 gguf.sha256)  smollm2.gguf" | sha256sum -c -) || {
    rm -f "$W/smollm2.gguf"; echo "GGUF digest mismatch (a part missing?): $(ls "$W")"; exit 3; }
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
case "$1" in
  stage1)
    python3 -m lib.pipeline --params params/accuracy/smoke.yaml --work "$W/smoke" --throughput --out "$OUT" 2>&1 | tail -20 ;;
  stage2)
    set -o pipefail
    make outputs/gpu/08_figure4b_kernels.ipynb USE_ACTIVE_ENV=1 PROFILE=gpu RUN_ENV="PYTHONPATH=/tmp/site:$PWD PYTHONHASHSEED=0" 2>&1 | tail -30
    tar czf "$OUT/nb08.tgz" outputs/gpu/08_figure4b_kernels outputs/gpu/08_figure4b_kernels.ipynb 2>/dev/null
    python3 scripts/old_vs_new.py --out "$OUT/old_vs_new.json" 2>&1 | tail -12 ;;
  final)  # the pipeline's last units within $2 seconds, then notebook 08 within $3 seconds
    python3 -m lib.pipeline --params params/accuracy/gpu.yaml --work "$W/work" --budget-s "${2:-90}" --out "$OUT" \
        --no-progress 2>&1 | tee "$OUT/pipeline.log" | grep -v "it/s" | tail -12
    timeout "${3:-400}" make outputs/gpu/08_figure4b_kernels.ipynb USE_ACTIVE_ENV=1 PROFILE=gpu \
        RUN_ENV="PYTHONPATH=/tmp/site:$PWD PYTHONHASHSEED=0" > "$OUT/nb08.log" 2>&1; echo "nb08 exit $?"; tail -5 "$OUT/nb08.log"
    tar czf "$OUT/nb08.tgz" outputs/gpu/08_figure4b_kernels outputs/gpu/08_figure4b_kernels.ipynb 2>/dev/null ;;
  gen)
    python3 -m lib.pipeline --params params/accuracy/gpu.yaml --work "$W/gen" --throughput --throughput-parts generate \
        --out "$OUT" 2>&1 | grep -v "it/s" | tail -20 ;;
  variants)
    python3 scripts/kernel_check.py --variants --out "$OUT/variants" 2>&1 | tee "$OUT/variants.log" | grep -v '^{"kind"' | tail -25
    [ -f "$OUT/variants/tiles_choice.json" ] && cp "$OUT/variants/tiles_choice.json" "$W/tiles_choice.json" ;;
  nb)
    [ -f "$W/tiles_choice.json" ] && export POWERATTN_TILES=$W/tiles_choice.json && echo "tiles: $(cat $POWERATTN_TILES | head -c 600)"
    timeout "${3:-500}" make "outputs/gpu/$2.ipynb" USE_ACTIVE_ENV=1 PROFILE=gpu \
        RUN_ENV="PYTHONPATH=/tmp/site:$PWD PYTHONHASHSEED=0 POWERATTN_TILES=${POWERATTN_TILES:-}" > "$OUT/$2.log" 2>&1
    echo "$2 exit $?"; tail -8 "$OUT/$2.log"
    tar czf "$OUT/$2.tgz" "outputs/gpu/$2" "outputs/gpu/$2.ipynb" 2>/dev/null ;;
  resume)
    mkdir -p "$W/artifacts"
    for f in outputs/gpu/accuracy_run/artifacts/*.json; do [ -e "$W/artifacts/${f##*/}" ] || cp "$f" "$W/artifacts/"; done
    python3 -m lib.pipeline --params params/accuracy/gpu.yaml --work "$W/work" --artifacts "$W/artifacts" \
        --budget-s "${2:-540}" --out "$OUT" --no-progress 2>&1 | tee "$OUT/pipeline.log" | tail -40 ;;
  run)
    python3 -m lib.pipeline --params params/accuracy/gpu.yaml --work "$W/work" --budget-s "${2:-540}" --out "$OUT" \
        --no-progress 2>&1 | tee "$OUT/pipeline.log" | tail -45 ;;
esac
ls -la "$OUT"
