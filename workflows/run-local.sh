#!/usr/bin/env bash
# slidemill's pipeline over a folder of slides with plain shell: one slide after another, each step a
# separate process (the same command lines as the containers, Nextflow and Argo run).
#
#   workflows/run-local.sh --slides DIR --out OUT [--model MODEL_DIR] [options]
#   workflows/run-local.sh --qupath-project PROJECT --out OUT [--slide-dir DIR] [--model MODEL_DIR] [options]
#
# Without --model, the slides that have an annotation file (<slide name>.geojson beside the slide or
# in --annotations DIR) are tiled, a model is trained on all their tilesets (OUT/model), and every
# slide is then inferred. With --model, every slide is inferred with that model (no tile, no train).
# Per slide: [tile] -> infer (one run, or --shards N runs) -> postprocess (all shards as one raster)
#            -> merge-annotations -> to-qupath (into the one QuPath project OUT/qupath-project).
#
# With --qupath-project, the images of that QuPath project are the slides, and their predictions go
# back into the same project. Its images are listed first (OUT/images.tsv: entry ID, slide, exported
# annotations), the slides found where QuPath finds them (the project's URIs, else relative to the
# moved project, else by file name in --slide-dir). Without --model, one tile run takes every image
# whose annotations the project's export script wrote (slidemill/annotations/<entry ID>.geojson; a
# project with none gets the script and the run stops, printing the QuPath command to run) into
# OUT/tiles/<entry ID>/ with one class table, and the model is trained on them. Then every image is
# inferred, post-processed and merged, and one to-qupath per image writes its objects into the project
# (slidemill/objects/<entry ID>.geojson and scripts/import-slidemill.groovy), finding its entry by the
# slide (URI), never by name: two images of the same name stay apart, and the project's entries and
# IDs are left as they are. Results are named by entry ID: OUT/slides/<entry ID>/. An image whose slide
# cannot be found fails (step find-slide) and the others go on.
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
#   --qupath-project P      a QuPath project (its folder or project.qpproj) instead of --slides
#   --slide-dir DIR         with --qupath-project: a folder to look for slides in by file name, when
#                           they are not where the project says (repeat for several; a file name two
#                           images of the project share is not looked for: which one it is is unknown)
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

SLIDES="" QUPATH_PROJECT="" SLIDE_DIRS=() OUT="" MODEL="" ANNOTATIONS="" MPP=0.5 TILE_SIZE=512 EPOCHS=20 SHARDS=1 DEVICE=auto WORKERS=0
SLIDE_MPP="" BIN="" DRY_RUN=0
TILE_ARGS="" TRAIN_ARGS="" INFER_ARGS="" POSTPROCESS_ARGS="" MERGE_ARGS="" TO_QUPATH_ARGS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --slides) SLIDES=${2:-}; shift 2 ;;
        --qupath-project) QUPATH_PROJECT=${2:-}; shift 2 ;;
        --slide-dir) SLIDE_DIRS+=("${2:-}"); shift 2 ;;
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

[ -n "$SLIDES" ] || [ -n "$QUPATH_PROJECT" ] || die "--slides DIR is required, or --qupath-project PROJECT (see --help)"
[ -z "$SLIDES" ] || [ -z "$QUPATH_PROJECT" ] \
    || die "give --slides DIR or --qupath-project PROJECT, not both (the project's images are the slides)"
[ -n "$OUT" ] || die "--out DIR is required (see --help)"
[ -z "$SLIDES" ] || [ -d "$SLIDES" ] || die "$SLIDES: the slides folder does not exist"
if [ -n "$QUPATH_PROJECT" ]; then
    [ -e "$QUPATH_PROJECT" ] || die "$QUPATH_PROJECT: the QuPath project does not exist (give its folder or project.qpproj)"
    [ -z "$ANNOTATIONS" ] || die "--annotations cannot be given with --qupath-project (the project's export is used)"
    for d in "${SLIDE_DIRS[@]}"; do [ -d "$d" ] || die "$d: the --slide-dir folder does not exist"; done
elif [ ${#SLIDE_DIRS[@]} -gt 0 ]; then
    die "--slide-dir goes with --qupath-project (with --slides, the slides are in that folder)"
fi
[ -z "$MODEL" ] || [ -f "$MODEL/model-card.json" ] || [ "$DRY_RUN" = 1 ] \
    || die "$MODEL: not a model folder (no model-card.json); give the --out folder of slidemill-train"
[ -z "$ANNOTATIONS" ] || [ -d "$ANNOTATIONS" ] || die "$ANNOTATIONS: the annotations folder does not exist"
[[ "$SHARDS" =~ ^[1-9][0-9]*$ ]] || die "--shards must be a whole number of at least 1, not '$SHARDS'"
ANNOTATIONS=${ANNOTATIONS:-$SLIDES}
PROJECT_MODE=0
[ -z "$QUPATH_PROJECT" ] || PROJECT_MODE=1

tool() {  # the command of a tool: on PATH, or in --bin
    if [ -n "$BIN" ]; then echo "$BIN/slidemill-$1"; else echo "slidemill-$1"; fi
}
for t in tile train infer postprocess merge-annotations to-qupath; do
    # a dry run over a project still lists its images (with slidemill-tile, which writes nothing there)
    if { [ "$DRY_RUN" = 0 ] || { [ "$PROJECT_MODE" = 1 ] && [ "$t" = tile ]; }; } && ! command -v "$(tool "$t")" > /dev/null 2>&1; then
        die "$(tool "$t") is not installed (run 'make install' and activate .venv, or pass --bin .venv/bin)"
    fi
done

say() {  # progress for people; on stderr in a dry run, whose stdout is only the commands
    if [ "$DRY_RUN" = 1 ]; then echo "$@" >&2; else echo "$@"; fi
}
if [ "$PROJECT_MODE" = 1 ]; then
    QUPATH_PROJECT="$(cd "$(dirname "$QUPATH_PROJECT")" && pwd)/$(basename "$QUPATH_PROJECT")"
    for i in "${!SLIDE_DIRS[@]}"; do SLIDE_DIRS[i]=$(cd "${SLIDE_DIRS[i]}" && pwd); done
else
    SLIDES=$(cd "$SLIDES" && pwd)
    ANNOTATIONS=$(cd "$ANNOTATIONS" && pwd)
fi
if [ "$DRY_RUN" = 0 ]; then
    mkdir -p "$OUT/slides" || die "$OUT: cannot create the output folder"
    OUT=$(cd "$OUT" && pwd)
fi
SUMMARY="$OUT/summary.tsv"
PROJECT="$OUT/qupath-project"
if [ "$PROJECT_MODE" = 1 ]; then  # the predictions go back into the project they came from
    PROJECT=$QUPATH_PROJECT
    [ ! -f "$PROJECT" ] || PROJECT=$(dirname "$PROJECT")  # given as its project.qpproj
fi
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
SLIDE_DIR_ARGS=()
for d in "${SLIDE_DIRS[@]}"; do SLIDE_DIR_ARGS+=(--slide-dir "$d"); done

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

# --- the slides: KEYS names each one's results (slides: the file name without its extension; a
# project: the entry ID), SLIDE_OF its slide, LABEL_OF how messages name it --------------------------
KEYS=()
declare -A SLIDE_OF=() LABEL_OF=() ANNOTATION_OF=() FOUND_OF=()
slide_name() { local b; b=$(basename "$1"); echo "${b%.*}"; }
split_tsv() {  # split_tsv LINE: FIELDS=(its tab-separated values, empty ones kept)
    local line=$1
    FIELDS=()
    while [[ $line == *$'\t'* ]]; do
        FIELDS+=("${line%%$'\t'*}")
        line=${line#*$'\t'}
    done
    FIELDS+=("$line")
}
if [ "$PROJECT_MODE" = 0 ]; then
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
    for slide in "${SLIDE_PATHS[@]}"; do  # results are named after the slide without its extension
        name=$(slide_name "$slide")
        [ -z "${SLIDE_OF[$name]:-}" ] || die "$slide and ${SLIDE_OF[$name]} would both write OUT/slides/$name; rename one"
        KEYS+=("$name")
        SLIDE_OF[$name]=$slide LABEL_OF[$name]=$name FOUND_OF[$name]=yes
        a="$ANNOTATIONS/$name.geojson"
        [ ! -f "$a" ] || ANNOTATION_OF[$name]=$a
    done
    say "slidemill pipeline: ${#KEYS[@]} slide(s) from $SLIDES into $OUT"
else
    # the project's images, listed by slidemill-tile: entry ID, name, slide, how it was found, export
    IMAGES="$OUT/images.tsv"
    LIST=("$(tool tile)" --qupath-project "$QUPATH_PROJECT" "${SLIDE_DIR_ARGS[@]}" --list-images --out "$IMAGES"
          --overwrite)
    if [ "$DRY_RUN" = 1 ]; then
        run_step "" list-images "${LIST[@]}"
        IMAGES=$(mktemp --suffix .tsv)
        trap 'rm -f "$IMAGES"' EXIT
        LIST[${#LIST[@]} - 2]=$IMAGES
        "${LIST[@]}" > /dev/null || exit $?
    else
        run_step "$OUT/logs" list-images "${LIST[@]}" || {
            echo "run-local.sh: the QuPath project's images could not be listed (exit $FAILED_CODE): $FAILED_MESSAGE" >&2
            exit "$FAILED_CODE"
        }
    fi
    header=1
    while IFS= read -r line; do
        if [ "$header" = 1 ]; then header=0; continue; fi
        split_tsv "$line"  # id name slide found_by annotations
        id=${FIELDS[0]}
        KEYS+=("$id")
        SLIDE_OF[$id]=${FIELDS[2]} LABEL_OF[$id]="entry $id (${FIELDS[1]})" FOUND_OF[$id]=${FIELDS[3]}
        [ -z "${FIELDS[4]}" ] || ANNOTATION_OF[$id]=${FIELDS[4]}
    done < "$IMAGES"
    [ ${#KEYS[@]} -gt 0 ] || die "$QUPATH_PROJECT: the QuPath project has no images"
    say "slidemill pipeline: ${#KEYS[@]} image(s) of the QuPath project $QUPATH_PROJECT, results in $OUT"
fi

FAILED_NAMES=()
DONE=0 SKIPPED=0
declare -A WORK=()

start_slide() {  # start_slide KEY -> sets WORK[KEY], 1 when already complete
    local name=$1 work
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
for name in "${KEYS[@]}"; do
    if start_slide "$name"; then
        TODO+=("$name")
    else
        say "== ${LABEL_OF[$name]}: already complete in $OUT/slides/$name, skipped"
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
        if [ "$PROJECT_MODE" = 0 ]; then
            for name in "${TODO[@]}"; do
                [ -n "${ANNOTATION_OF[$name]:-}" ] || continue
                say "== $name: tile"
                if run_step "${WORK[$name]}/logs" tile "$(tool tile)" "${SLIDE_OF[$name]}" --out "${WORK[$name]}/tiles" \
                        --annotations "${ANNOTATION_OF[$name]}" --mpp "$MPP" --tile-size "$TILE_SIZE" \
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
        else
            # one run over the whole project: one class table for every image (the project's classes).
            # Built beside OUT/tiles and moved there when complete, so no tileset of an earlier run is left in.
            say "== project: tile every image with exported annotations"
            [ "$DRY_RUN" = 1 ] || rm -rf "$OUT/tiles.partial"
            if ! run_step "$OUT/logs" tile "$(tool tile)" --qupath-project "$QUPATH_PROJECT" "${SLIDE_DIR_ARGS[@]}" \
                    --out "$OUT/tiles.partial" --mpp "$MPP" --tile-size "$TILE_SIZE" \
                    "${SLIDE_MPP_ARGS[@]}" "${COMMON[@]}" "${TILE_EXTRA[@]}"; then
                echo "run-local.sh: the QuPath project could not be tiled (exit $FAILED_CODE), see $OUT/logs/tile.log:" >&2
                echo "  $FAILED_MESSAGE" >&2
                exit "$FAILED_CODE"
            fi
            if [ "$DRY_RUN" = 0 ]; then
                rm -rf "$OUT/tiles"
                mv "$OUT/tiles.partial" "$OUT/tiles"
            fi
            for name in "${KEYS[@]}"; do  # the images tile took (its report.json says why any other was not)
                if [ "$DRY_RUN" = 1 ]; then
                    [ -z "${ANNOTATION_OF[$name]:-}" ] || [ -z "${FOUND_OF[$name]}" ] || TILESETS+=("$OUT/tiles/$name")
                elif [ -f "$OUT/tiles/$name/tileset.json" ]; then
                    TILESETS+=("$OUT/tiles/$name")
                fi
            done
            say "   ${#TILESETS[@]} of ${#KEYS[@]} image(s) tiled; the others are listed in $OUT/tiles/report.json"
        fi
        say "== model: train on ${#TILESETS[@]} tileset(s)"
        if ! run_step "$OUT/logs" train "$(tool train)" "${TILESETS[@]}" --out "$MODEL" --epochs "$EPOCHS" \
                --device "$DEVICE" "${COMMON[@]}" "${TRAIN_EXTRA[@]}"; then
            echo "run-local.sh: training failed (exit $FAILED_CODE), see $OUT/logs/train.log; no slide was inferred" >&2
            exit "$FAILED_CODE"
        fi
    fi
fi

# --- per slide: infer, postprocess, merge-annotations, to-qupath -----------------------------------
for name in "${TODO[@]}"; do
    [ -n "${WORK[$name]:-}" ] || continue  # failed at tile
    work=${WORK[$name]}
    logs="$work/logs"
    slide=${SLIDE_OF[$name]}
    say "== ${LABEL_OF[$name]}"
    if [ -z "${FOUND_OF[$name]}" ]; then  # a project's image whose slide is nowhere to be found
        FAILED_STEP=find-slide FAILED_CODE=2
        FAILED_MESSAGE="error: ${slide:-its URI}: the slide of ${LABEL_OF[$name]} was not found there, relative to the project, or in the --slide-dir folders. Pass --slide-dir with the folder that holds it."
        say "  find-slide         FAILED (exit 2): $FAILED_MESSAGE"
        [ "$DRY_RUN" = 1 ] || echo "$FAILED_MESSAGE" > "$logs/find-slide.log"
        fail_slide "$name" "$work"
        continue
    fi
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
    # to-qupath finds the slide's entry by its file (URI), so two images of one name never mix
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
if [ "$PROJECT_MODE" = 1 ] && [ "$DONE" -gt 0 ]; then
    echo "  into QuPath:    QuPath script --project=$(printf '%q' "$PROJECT/project.qpproj") --save $(printf '%q' "$PROJECT/scripts/import-slidemill.groovy")"
fi
exit "$FIRST_FAILURE"
