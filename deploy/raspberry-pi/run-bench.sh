#!/usr/bin/env bash
# Benchmark edgecompress artifacts on a Raspberry Pi (or any Linux aarch64 box) with only the runtime.
#
# Usage:  ./run-bench.sh [MODEL.onnx ...]            (default: model.dense.onnx model.onnx)
# Environment (all optional):
#   DATA=test.npz        data set with x (and y) - without it: random inputs, accuracy n/a
#   BATCH=1,32           batch sizes
#   THREADS=1            onnxruntime intra-op threads
#   SECONDS_PER_BATCH=10 timed seconds per batch size (all models together)
#   CORES=               taskset core list, e.g. "2" or "2-3" (default: no pinning)
#   GOVERNOR=performance set this cpufreq governor for the run and restore it after (needs sudo);
#                        empty: leave the governor alone
#   OUT=bench-results/<hostname>-<timestamp>
# Writes OUT/bench.json, OUT/bench.md (and OUT/report.html when matplotlib is installed) and
# OUT/device.txt (model, governor, temperature, throttling before and after).
set -euo pipefail

MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(model.dense.onnx model.onnx)
BATCH=${BATCH:-1,32}
THREADS=${THREADS:-1}
SECONDS_PER_BATCH=${SECONDS_PER_BATCH:-10}
GOVERNOR=${GOVERNOR-performance}
OUT=${OUT:-bench-results/$(hostname)-$(date +%Y%m%d-%H%M%S)}

command -v edgecompress >/dev/null || { echo "edgecompress not found: activate the venv (see README.md)" >&2; exit 2; }
mkdir -p "$OUT"

device_state() {
    echo "== $1 $(date -Is)"
    [ -r /proc/device-tree/model ] && { tr -d '\0' < /proc/device-tree/model; echo; }
    echo "kernel: $(uname -srm)"
    for f in /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor; do
        [ -r "$f" ] && echo "$(basename "$(dirname "$(dirname "$f")")"): $(cat "$f") $(cat "$(dirname "$f")/scaling_cur_freq" 2>/dev/null || true) kHz"
    done
    [ -r /sys/class/thermal/thermal_zone0/temp ] && echo "temp: $(( $(cat /sys/class/thermal/thermal_zone0/temp) / 1000 )) C"
    if command -v vcgencmd >/dev/null; then
        echo "throttled: $(vcgencmd get_throttled 2>/dev/null || echo unknown)"   # 0x0 = never throttled
    fi
}

# Optionally switch the governor for the run, and put the old one back whatever happens.
OLD_GOV=""
GOV0=/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor
if [ -n "$GOVERNOR" ] && [ -r "$GOV0" ] && [ "$(cat "$GOV0")" != "$GOVERNOR" ]; then
    if sudo -n true 2>/dev/null; then
        OLD_GOV=$(cat "$GOV0")
        echo "$GOVERNOR" | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor >/dev/null
        trap 'echo "$OLD_GOV" | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor >/dev/null' EXIT
        sleep 1
    else
        echo "note: governor is $(cat "$GOV0"); run with sudo rights to switch to $GOVERNOR (or GOVERNOR= to silence)" >&2
    fi
fi

device_state before > "$OUT/device.txt"

ARGS=(bench "${MODELS[@]}" --batch "$BATCH" --threads "$THREADS" --seconds "$SECONDS_PER_BATCH"
      --json "$OUT/bench.json" --md "$OUT/bench.md")
[ -n "${DATA:-}" ] && ARGS+=(--data "$DATA")
python3 -c "import matplotlib" 2>/dev/null && ARGS+=(--html "$OUT/report.html")
if [ -n "${CORES:-}" ]; then
    taskset -c "$CORES" edgecompress "${ARGS[@]}"
else
    edgecompress "${ARGS[@]}"
fi

device_state after >> "$OUT/device.txt"
cat "$OUT/device.txt"
if grep -q "throttled: throttled=0x[1-9a-f]" "$OUT/device.txt"; then
    echo "WARNING: the Pi throttled (under-voltage or heat) - numbers are not comparable; see README.md" >&2
fi
echo
echo "Results in $OUT. Bring them back with, on your computer:"
echo "  scp -r $(whoami)@$(hostname).local:$(cd "$OUT" && pwd) ."
echo "  edgecompress report $(basename "$OUT")/bench.json --html report.html"
