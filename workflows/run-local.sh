#!/usr/bin/env bash
# slidemill's pipeline over a folder of slides with plain shell: one slide after another, each step a
# separate process (the same command lines as the containers, Nextflow and Argo run).
#
#   workflows/run-local.sh --slides DIR --out OUT [--model MODEL_DIR] [options]
#
# Without --model, the slides that have an annotation file (<slide name>.geojson beside the slide or
# in --annotations DIR) are tiled, a model is trained on all their tilesets (OUT/model), and every
# slide is then inferred. With --model, every slide is inferred with that model (no tile, no train).
# Per slide: [tile] -> infer (one run, or --shards N runs) -> postprocess (all shards as one raster)
#            -> merge-annotations -> to-qupath (into the one QuPath project OUT/qupath-project).
#
# A slide's results are built in OUT/slides/<name>.partial and renamed to OUT/slides/<name> only when
# its last step succeeded. A failed step stops that slide (its folder becomes <name>.failed, with
# FAILED.txt naming the step, the exit code and the message); the other slides go on. A slide whose
# folder is already complete is skipped, so a rerun resumes a batch. OUT/summary.tsv lists every
# slide of the run (ok, failed with step, exit code and message, or skipped). Exit status: 0 when every slide succeeded, else the exit code of the first failed step.
#
# Options:
#   --slides DIR            folder of slides (.svs .tif .tiff .ndpi .mrxs .scn .bif .svslide .vms .dcm
#                           .png .jpg .jpeg, or a DICOM series folder)
#   --out DIR               output folder (created)
#   --model DIR             an existing model folder (from slidemill-train): infer only
#   --annotations DIR       where <slide name>.geojson files are (default: beside the slides)
#   --mpp X                 tile resolution in microns per pixel (default 0.5)
#   --tile-size N           tile size in pixels (default 512)
#   --epochs N              training epochs (default 20)
#   --shards N              infer each slide in N shards, post-processed together (default 1)
#   --device auto|cpu|cuda  for train and infer (default auto)
#   --workers N             worker processes per step (default 0: one per core)
#   --slide-mpp X           microns per pixel of slides whose files lack it
#   --tile-args "..."       extra options for slidemill-tile (likewise --train-args, --infer-args,
#                           --postprocess-args, --merge-args, --to-qupath-args; split on spaces)
#   --bin DIR               where the slidemill-* commands are (default: on PATH)
#   --dry-run               print each command instead of running it
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "run-local.sh: $*" >&2; exit 2; }

SLIDES="" OUT="" MODEL="" ANNOTATIONS="" MPP=0.5 TILE_SIZE=512 EPOCHS=20 SHARDS=1 DEVICE=auto WORKERS=0
SLIDE_MPP="" BIN="" DRY_RUN=0
TILE_ARGS="" TRAIN_ARGS="" INFER_ARGS="" POSTPROCESS_ARGS="" MERGE_ARGS="" TO_QUPATH_ARGS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --slides) SLIDES=${2:-}; shift 2 ;;
        --out) OUT=${2:-}; shift 2 ;;
        --model) MODEL=${2:-}; shift 2 ;;
        --annotations) ANNOTATIONS=${2:-}; shift 2 ;;
        --mpp) MPP=${2:-}; shift 2 ;;
        --tile-size) TILE_SIZE=${2:-}; shift 2 ;;
        --epochs) EPOCHS=${2:-}; shift 2 ;;
        --shards) SHARDS=${2:-}; shift 2 ;;
        --device) DEVICE=${2:-}; shift 2 ;;
        --workers) WORKERS=${2:-}; shift 2 ;;
        --slide-mpp) SLIDE_MPP=${2:-}; shift 2 ;;
        --tile-args) TILE_ARGS=${2:-}; shift 2 ;;
        --train-args) TRAIN_ARGS=${2:-}; shift 2 ;;
        --infer-args) INFER_ARGS=${2:-}; shift 2 ;;
        --postprocess-args) POSTPROCESS_ARGS=${2:-}; shift 2 ;;
        --merge-args) MERGE_ARGS=${2:-}; shift 2 ;;
        --to-qupath-args) TO_QUPATH_ARGS=${2:-}; shift 2 ;;
        --bin) BIN=${2:-}; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

[ -n "$SLIDES" ] || die "--slides DIR is required (see --help)"
[ -n "$OUT" ] || die "--out DIR is required (see --help)"
[ -d "$SLIDES" ] || die "$SLIDES: the slides folder does not exist"
[ -z "$MODEL" ] || [ -f "$MODEL/model-card.json" ] || [ "$DRY_RUN" = 1 ] \
    || die "$MODEL: not a model folder (no model-card.json); give the --out folder of slidemill-train"
[ -z "$ANNOTATIONS" ] || [ -d "$ANNOTATIONS" ] || die "$ANNOTATIONS: the annotations folder does not exist"
[[ "$SHARDS" =~ ^[1-9][0-9]*$ ]] || die "--shards must be a whole number of at least 1, not '$SHARDS'"
ANNOTATIONS=${ANNOTATIONS:-$SLIDES}

tool() {  # the command of a tool: on PATH, or in --bin
    if [ -n "$BIN" ]; then echo "$BIN/slidemill-$1"; else echo "slidemill-$1"; fi
}
for t in tile train infer postprocess merge-annotations to-qupath; do
    if [ "$DRY_RUN" = 0 ] && ! command -v "$(tool "$t")" > /dev/null 2>&1; then
        die "$(tool "$t") is not installed (run 'make install' and activate .venv, or pass --bin .venv/bin)"
    fi
done

say() {  # progress for people; on stderr in a dry run, whose stdout is only the commands
    if [ "$DRY_RUN" = 1 ]; then echo "$@" >&2; else echo "$@"; fi
}
SLIDES=$(cd "$SLIDES" && pwd)
ANNOTATIONS=$(cd "$ANNOTATIONS" && pwd)
if [ "$DRY_RUN" = 0 ]; then
    mkdir -p "$OUT/slides" || die "$OUT: cannot create the output folder"
    OUT=$(cd "$OUT" && pwd)
fi
SUMMARY="$OUT/summary.tsv"
PROJECT="$OUT/qupath-project"
# this run's outcome per slide (a rerun rewrites it; slides already complete are listed as skipped)
[ "$DRY_RUN" = 1 ] || printf 'slide\tstatus\tstep\texit_code\tmessage\n' > "$SUMMARY"
COMMON=(--workers "$WORKERS")
SLIDE_MPP_ARGS=()
[ -z "$SLIDE_MPP" ] || SLIDE_MPP_ARGS=(--slide-mpp "$SLIDE_MPP")
read -r -a TILE_EXTRA <<< "$TILE_ARGS"
read -r -a TRAIN_EXTRA <<< "$TRAIN_ARGS"
read -r -a INFER_EXTRA <<< "$INFER_ARGS"
read -r -a POSTPROCESS_EXTRA <<< "$POSTPROCESS_ARGS"
read -r -a MERGE_EXTRA <<< "$MERGE_ARGS"
read -r -a TO_QUPATH_EXTRA <<< "$TO_QUPATH_ARGS"

FIRST_FAILURE=0
FAILED_STEP="" FAILED_CODE=0 FAILED_MESSAGE=""

# run_step LOGDIR STEP COMMAND...: one step as its own process, its output in LOGDIR/STEP.log.
run_step() {
    local logdir=$1 step=$2
    shift 2
    if [ "$DRY_RUN" = 1 ]; then
        printf '%q ' "$@" | sed 's/ $//'
        echo
        return 0
    fi
    mkdir -p "$logdir"
    local started code
    started=$(date +%s)
    printf '  %-18s ' "$step"
    "$@" > "$logdir/$step.log" 2>&1 < /dev/null
    code=$?
    if [ "$code" = 0 ]; then
        echo "ok ($(( $(date +%s) - started )) s)"
        return 0
    fi
    FAILED_STEP=$step
    FAILED_CODE=$code
    # the tools print one paragraph "error: ..." for a user error, a one-line summary otherwise
    FAILED_MESSAGE=$(grep -E '^(error:|slidemill-[a-z-]+: )' "$logdir/$step.log" | tail -n 1)
    [ -n "$FAILED_MESSAGE" ] || FAILED_MESSAGE=$(grep -v '^[[:space:]]*$' "$logdir/$step.log" | tail -n 1)
    echo "FAILED (exit $code): $FAILED_MESSAGE"
    return "$code"
}

record() {  # record NAME STATUS STEP CODE MESSAGE
    local message=${5//$'\t'/ }
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${message//$'\n'/ }" >> "$SUMMARY"
}

# fail_slide NAME WORKDIR: the slide's partial results become NAME.failed, never looking complete.
fail_slide() {
    local name=$1 work=$2 failed="$OUT/slides/$1.failed"
    [ "$DRY_RUN" = 1 ] && return 0
    rm -rf "$failed"
    mkdir -p "$work"
    printf 'step: %s\nexit_code: %s\nmessage: %s\nlog: %s\n' "$FAILED_STEP" "$FAILED_CODE" "$FAILED_MESSAGE" \
        "logs/$FAILED_STEP.log" > "$work/FAILED.txt"
    mv "$work" "$failed"
    record "$name" failed "$FAILED_STEP" "$FAILED_CODE" "$FAILED_MESSAGE"
    [ "$FIRST_FAILURE" != 0 ] || FIRST_FAILURE=$FAILED_CODE
    FAILED_NAMES+=("$name ($FAILED_STEP, exit $FAILED_CODE): $FAILED_MESSAGE")
}

# --- the slides ------------------------------------------------------------------------------------
shopt -s nullglob nocaseglob
SLIDE_PATHS=()
for f in "$SLIDES"/*; do
    case "$f" in
        *.svs|*.tif|*.tiff|*.ndpi|*.mrxs|*.scn|*.bif|*.svslide|*.vms|*.dcm|*.png|*.jpg|*.jpeg) SLIDE_PATHS+=("$f") ;;
        *) if [ -d "$f" ] && compgen -G "$f/*.dcm" > /dev/null; then SLIDE_PATHS+=("$f"); fi ;;
    esac
done
shopt -u nocaseglob
[ ${#SLIDE_PATHS[@]} -gt 0 ] || die "$SLIDES: no slides found (looked for .svs .tif .tiff .ndpi .mrxs ... and DICOM folders)"

slide_name() { local b; b=$(basename "$1"); echo "${b%.*}"; }
declare -A SEEN=()
for slide in "${SLIDE_PATHS[@]}"; do  # results are named after the slide without its extension
    name=$(slide_name "$slide")
    [ -z "${SEEN[$name]:-}" ] || die "$slide and ${SEEN[$name]} would both write OUT/slides/$name; rename one"
    SEEN[$name]=$slide
done
annotation_of() {
    local a
    a="$ANNOTATIONS/$(slide_name "$1").geojson"
    [ -f "$a" ] && echo "$a"
}

FAILED_NAMES=()
DONE=0 SKIPPED=0
declare -A WORK=()
say "slidemill pipeline: ${#SLIDE_PATHS[@]} slide(s) from $SLIDES into $OUT"

start_slide() {  # start_slide SLIDE -> sets WORK[name], 1 when already complete
    local name work
    name=$(slide_name "$1")
    work="$OUT/slides/$name.partial"
    if [ -f "$OUT/slides/$name/COMPLETE" ]; then
        return 1
    fi
    if [ "$DRY_RUN" = 0 ]; then
        rm -rf "$work" "$OUT/slides/$name.failed"
        mkdir -p "$work/logs"
    fi
    WORK[$name]=$work
    return 0
}

TODO=()
for slide in "${SLIDE_PATHS[@]}"; do
    name=$(slide_name "$slide")
    if start_slide "$slide"; then
        TODO+=("$slide")
    else
        say "== $name: already complete in $OUT/slides/$name, skipped"
        [ "$DRY_RUN" = 1 ] || record "$name" skipped "" 0 "already complete"
        SKIPPED=$((SKIPPED + 1))
    fi
done

# --- training (only without --model) ---------------------------------------------------------------
if [ -z "$MODEL" ]; then
    MODEL="$OUT/model"
    if [ -f "$MODEL/model-card.json" ]; then
        say "== model: $MODEL exists, reused"
    else
        TILESETS=()
        for slide in "${TODO[@]}"; do
            name=$(slide_name "$slide")
            ann=$(annotation_of "$slide") || continue
            say "== $name: tile"
            if run_step "${WORK[$name]}/logs" tile "$(tool tile)" "$slide" --out "${WORK[$name]}/tiles" \
                    --annotations "$ann" --mpp "$MPP" --tile-size "$TILE_SIZE" \
                    "${SLIDE_MPP_ARGS[@]}" "${COMMON[@]}" "${TILE_EXTRA[@]}"; then
                TILESETS+=("${WORK[$name]}/tiles")
            else
                fail_slide "$name" "${WORK[$name]}"
                unset "WORK[$name]"
            fi
        done
        [ ${#TILESETS[@]} -gt 0 ] || {
            echo "run-local.sh: no slide with annotations could be tiled, so there is nothing to train on" >&2
            echo "  (annotation files are <slide name>.geojson in ${ANNOTATIONS}; or pass --model)" >&2
            exit $(( FIRST_FAILURE ? FIRST_FAILURE : 2 ))
        }
        say "== model: train on ${#TILESETS[@]} tileset(s)"
        if ! run_step "$OUT/logs" train "$(tool train)" "${TILESETS[@]}" --out "$MODEL" --epochs "$EPOCHS" \
                --device "$DEVICE" "${COMMON[@]}" "${TRAIN_EXTRA[@]}"; then
            echo "run-local.sh: training failed (exit $FAILED_CODE), see $OUT/logs/train.log; no slide was inferred" >&2
            exit "$FAILED_CODE"
        fi
    fi
fi

# --- per slide: infer, postprocess, merge-annotations, to-qupath -----------------------------------
for slide in "${TODO[@]}"; do
    name=$(slide_name "$slide")
    [ -n "${WORK[$name]:-}" ] || continue  # failed at tile
    work=${WORK[$name]}
    logs="$work/logs"
    say "== $name"
    predictions=()
    ok=1
    for ((i = 0; i < SHARDS; i++)); do
        if [ "$SHARDS" = 1 ]; then
            suffix="" shard_args=()
        else
            suffix="-shard$i" shard_args=(--shard "$i/$SHARDS")
        fi
        run_step "$logs" "infer$suffix" "$(tool infer)" "$slide" "$MODEL" --out "$work/prediction$suffix" \
            "${shard_args[@]}" --device "$DEVICE" "${SLIDE_MPP_ARGS[@]}" "${COMMON[@]}" "${INFER_EXTRA[@]}" \
            || { ok=0; break; }
        predictions+=("$work/prediction$suffix")
    done
    # the shards' rasters stack exactly: postprocess cleans them as one raster, so size filtering, hole
    # filling and smoothing see whole shapes, and the result equals the unsharded one
    if [ "$ok" = 1 ]; then
        run_step "$logs" postprocess "$(tool postprocess)" "${predictions[@]}" --out "$work/annotations.geojson" \
            "${POSTPROCESS_EXTRA[@]}" || ok=0
    fi
    if [ "$ok" = 1 ]; then
        run_step "$logs" merge-annotations "$(tool merge-annotations)" "$work/annotations.geojson" \
            --out "$work/$name.geojson" "${MERGE_EXTRA[@]}" || ok=0
    fi
    if [ "$ok" = 1 ]; then
        run_step "$logs" to-qupath "$(tool to-qupath)" "$work/$name.geojson" --out "$work/qupath" \
            --slide "$slide" --project "$PROJECT" "${TO_QUPATH_EXTRA[@]}" || ok=0
    fi
    if [ "$ok" = 0 ]; then
        fail_slide "$name" "$work"
        continue
    fi
    [ "$DRY_RUN" = 1 ] && continue
    date -u +%Y-%m-%dT%H:%M:%SZ > "$work/COMPLETE"
    rm -rf "$OUT/slides/$name"
    mv "$work" "$OUT/slides/$name"
    record "$name" ok "" 0 ""
    DONE=$((DONE + 1))
done

[ "$DRY_RUN" = 1 ] && exit 0
echo
echo "slidemill pipeline: $DONE slide(s) done, $SKIPPED skipped, ${#FAILED_NAMES[@]} failed"
for f in "${FAILED_NAMES[@]}"; do echo "  FAILED $f"; done
echo "  results:        $OUT/slides/<slide>/   (predictions, annotations, every step's report and log)"
echo "  QuPath project: $PROJECT/project.qpproj"
echo "  summary:        $SUMMARY"
exit "$FIRST_FAILURE"
