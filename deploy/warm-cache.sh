#!/bin/sh
# warm-cache CHECKPOINT: compile CHECKPOINT's graphs into ~/.cache/modular by
# serving it once with the image's entry-point flags, then stop. Bounded:
# gives up after 30 minutes.
set -eu
port=18000
max serve --custom-architectures gpt2_lmhead_model --host 127.0.0.1 --port "$port" \
    --model-path "$1" &
pid=$!
started=$(date +%s)
until curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "warm-cache: max serve exited" >&2; exit 1; }
    if [ $(( $(date +%s) - started )) -gt 1800 ]; then
        echo "warm-cache: not ready after 30 minutes" >&2
        kill -KILL "$pid"
        exit 1
    fi
    sleep 2
done
echo "warm-cache: ready after $(( $(date +%s) - started )) s" >&2
kill -INT "$pid"
wait "$pid" || true
du -sh "$HOME/.cache/modular" >&2
