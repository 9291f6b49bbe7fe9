#!/usr/bin/env bash
# `make demo`: the whole slidemill pipeline on the bundled sample slide, with the shell workflow.
#   demo/run-demo.sh [OUT]      (default OUT: demo-output; replaced on every run)
# tile -> train (a short CPU schedule of a small model) -> infer -> postprocess -> merge-annotations
# -> to-qupath, then the previews and every step's report gathered in OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo-output}
BIN=${BIN:-.venv/bin}
SLIDE=demo/CMU-1-Small-Region.svs

[ -x "$BIN/slidemill-tile" ] || { echo "demo: $BIN/slidemill-tile is missing; run 'make demo' (it installs first)" >&2; exit 2; }
rm -rf "$OUT"
started=$(date +%s)
echo "slidemill demo: $SLIDE (Aperio H&E, 2220 x 2967 px at 0.499 um/px) with the hand-drawn sparse annotation"
echo "  demo/CMU-1-Small-Region.geojson (Epithelium, Stroma, Other = keratin, Background = glass,"
echo "  Ignore* = frayed edge and ink)"
echo

# Tiles of 64 px at 2 um/px (128 um), overlapping by half, only where annotated; slidemill-train's default
# recipe from random weights with only a budget: 30 epochs (360 steps of 8 tiles, about a minute of training on
# an idle 2-core machine), capped by --time-limit 5 (minutes): a machine too busy to run the 30 epochs in 5 minutes gets a
# schedule fitted to the 5 minutes instead. On an idle 2-core machine the epochs are the limit, so the
# model is the same on every run (for one thread count).
# The glass is annotated (Background) so the model learns to leave it out; postprocess keeps the tissue
# classes only.
status=0
workflows/run-local.sh --slides demo --out "$OUT" --bin "$BIN" \
    --mpp 2.0 --tile-size 64 --epochs "${DEMO_TRAIN_EPOCHS:-30}" --workers 2 --device cpu \
    --tile-args "--overlap 32 --annotated-only --all-tiles" \
    --train-args "--time-limit ${DEMO_TRAIN_MINUTES:-5} --seed 0" \
    --postprocess-args "--min-area-um2 500 --smooth-um 4 --classes Epithelium --classes Stroma --classes Other" \
    --merge-args "--max-gap-um 4" || status=$?

name=CMU-1-Small-Region
result="$OUT/slides/$name"
mkdir -p "$OUT/previews" "$OUT/reports"
copy() { [ -f "$1" ] && cp "$1" "$2" || true; }
copy "$result/tiles/preview.png" "$OUT/previews/1-tiles-and-annotations.png"
copy "$OUT/model/curves.png" "$OUT/previews/2-training-curves.png"
copy "$result/prediction/preview.png" "$OUT/previews/3-prediction.png"
copy "$result/tiles/report.json" "$OUT/reports/1-tile.report.json"
copy "$OUT/model/report.json" "$OUT/reports/2-train.report.json"
copy "$result/prediction/report.json" "$OUT/reports/3-infer.report.json"
copy "$result/annotations.report.json" "$OUT/reports/4-postprocess.report.json"
copy "$result/$name.report.json" "$OUT/reports/5-merge-annotations.report.json"
copy "$result/qupath/report.json" "$OUT/reports/6-to-qupath.report.json"

echo
if [ "$status" != 0 ]; then
    echo "slidemill demo FAILED (exit $status): see $OUT/summary.tsv and the logs in $OUT/slides/*/logs" >&2
    exit "$status"
fi
"$BIN/python" - "$OUT" "$name" <<'PY'
import json, sys
from pathlib import Path
out, name = Path(sys.argv[1]), sys.argv[2]
card = json.loads((out / "model" / "model-card.json").read_text())
metrics = ", ".join(f"{k} {v['iou']:.2f}" if v.get("iou") is not None else f"{k} not validated (no pixels)"
                    for k, v in card.get("metrics", {}).items())
mean = card.get("mean_iou")
print(f"model: {card['architecture']}/{card['encoder']} at {card['input']['mpp']} um/px, "
      f"validation IoU per class: {metrics or 'n/a'}; mean {'n/a' if mean is None else f'{mean:.2f}'}")
for warning in card.get("warnings", []):
    print(f"  warning: {warning}")
merged = json.loads((out / "slides" / name / f"{name}.geojson").read_text())
counts = {}
for f in merged["features"]:
    c = f["properties"]["classification"]["name"]
    counts[c] = counts.get(c, 0) + 1
print("predicted shapes: " + ", ".join(f"{n} {c}" for c, n in sorted(counts.items())))
PY
echo "finished in $(( $(date +%s) - started )) s. Where to look, all in $OUT/:"
echo "  previews/      tiles and annotations, training curves, prediction overlay (PNG)"
echo "  reports/       every step's report.json (also beside each output in slides/$name/)"
echo "  qupath-project/project.qpproj   open it in QuPath; to load the shapes headless run:"
grep -h -o "QuPath script .*" "$result/logs/to-qupath.log" | tail -n 1 | sed 's/^/                 /' || true
echo "  slides/$name/   tiles, prediction rasters, annotations (GeoJSON), logs"
echo "  model/          model.onnx, model-card.json, checkpoints, metrics.csv"
