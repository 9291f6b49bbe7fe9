#!/usr/bin/env nextflow
/*
 * slidemill: slides + QuPath annotations -> trained model -> QuPath-ready annotations.
 *
 *   nextflow run workflows/nextflow/main.nf -profile docker \
 *       --slides 'slides/*.svs' --annotations annotations/ --outdir results
 *   nextflow run workflows/nextflow/main.nf -profile docker \
 *       --slides 'slides/*.svs' --model results/model --outdir results      // infer only
 *   nextflow run workflows/nextflow/main.nf -profile docker \
 *       --qupath_project lab/project --slide_dir lab/slides --outdir results  // a QuPath project in and out
 *
 * With --qupath_project, the project's images are the slides (listed by LIST_IMAGES: the slide found for
 * each entry where QuPath finds it, and its annotations exported by the project's export script), one
 * TILE_PROJECT task tiles every exported image with one class table, and TO_QUPATH_PROJECT writes each
 * image's predictions back into that same project, one image at a time, finding its entry by the slide
 * (URI), never by name. Results are named by entry ID. --slide_dir names the folder(s) holding the slides:
 * they are staged into the tasks that read the project (so a container sees the slides where the project
 * says they are) and searched by file name for slides that are not there.
 * Every process calls only a slidemill command line (the container's entrypoint command); a `stub:`
 * block creates the declared outputs, so `-stub-run` checks the wiring without running anything.
 * Fan-out per slide; a slide larger than --large_slide_mb is inferred in --shards shards on
 * separate GPU tasks, and postprocess takes the slide's shards together as one raster.
 */
nextflow.enable.dsl = 2

params.slides         = null       // glob of slides, e.g. 'slides/*.svs'
params.annotations    = null       // folder of <slide name>.geojson QuPath exports (training mode)
params.model          = null       // an existing slidemill-train output folder (infer-only mode)
params.qupath_project = null       // a QuPath project (folder or project.qpproj) instead of --slides
params.slide_dir      = null       // with --qupath_project: folder(s) of its slides (a glob for several)
params.outdir         = 'results'
params.mpp            = 0.5        // tile and model resolution, microns per pixel
params.tile_size      = 512
params.epochs         = 20
params.batch_size     = 8
params.arch           = 'unet'
params.encoder        = 'efficientnet-b0'
params.encoder_weights = 'none'    // 'imagenet' needs internet on the training node, or a local .pt
params.shards         = 4          // shards of one large slide
params.large_slide_mb = 2000       // slides larger than this (file size) are inferred in shards
params.max_gap_um     = 2.0        // merge same-class shapes this close
params.min_area_um2   = 100.0

process TILE {
    tag "${id}"
    label 'cpu'
    publishDir "${params.outdir}/tiles", mode: 'copy'

    input:
    tuple val(id), path(slide), path(annotations)

    output:
    path "${id}.tiles", emit: tileset

    script:
    """
    slidemill-tile ${slide} --out ${id}.tiles --annotations ${annotations} --mpp ${params.mpp} --tile-size ${params.tile_size} --workers ${task.cpus} --log-format json
    """

    stub:
    """
    mkdir -p ${id}.tiles && touch ${id}.tiles/tileset.json ${id}.tiles/report.json
    """
}

process LIST_IMAGES {
    label 'cpu'
    publishDir "${params.outdir}", mode: 'copy'

    input:
    path project
    path slide_dirs, stageAs: 'slide-dirs/*'

    output:
    path 'images.tsv', emit: images

    script:
    def slide_dir_args = (slide_dirs instanceof List ? slide_dirs : [slide_dirs]).collect { "--slide-dir ${it}" }.join(' ')
    """
    slidemill-tile --qupath-project ${project} ${slide_dir_args} --list-images --out images.tsv --log-format json
    """

    stub:
    """
    printf 'id\tname\tslide\tfound_by\tannotations\n' > images.tsv
    """
}

process TILE_PROJECT {
    // one task for the whole project: one class table for every image (the project's classes)
    label 'cpu'
    publishDir "${params.outdir}", mode: 'copy'

    input:
    path project
    path slide_dirs, stageAs: 'slide-dirs/*'

    output:
    path 'tiles/[0-9]*', type: 'dir', emit: tilesets
    path 'tiles/report.json', emit: report

    script:
    def slide_dir_args = (slide_dirs instanceof List ? slide_dirs : [slide_dirs]).collect { "--slide-dir ${it}" }.join(' ')
    """
    slidemill-tile --qupath-project ${project} ${slide_dir_args} --out tiles --mpp ${params.mpp} --tile-size ${params.tile_size} --workers ${task.cpus} --log-format json
    """

    stub:
    """
    mkdir -p tiles/1 && touch tiles/1/tileset.json tiles/report.json
    """
}

process TRAIN {
    label 'gpu'
    publishDir "${params.outdir}", mode: 'copy'

    input:
    path tilesets, stageAs: 'tilesets/*'

    output:
    path 'model', emit: model

    script:
    """
    slidemill-train ${tilesets} --out model --arch ${params.arch} --encoder ${params.encoder} --encoder-weights ${params.encoder_weights} --epochs ${params.epochs} --batch-size ${params.batch_size} --device auto --workers ${task.cpus} --log-format json
    """

    stub:
    """
    mkdir -p model && touch model/model.onnx model/model-card.json model/report.json
    """
}

process INFER {
    tag "${id} shard ${shard + 1}/${nshards}"
    label 'gpu'
    publishDir "${params.outdir}/predictions/${id}", mode: 'copy'

    input:
    tuple val(id), path(slide), val(shard), val(nshards)
    path model

    output:
    tuple val(id), val(nshards), path("prediction-${shard}"), emit: prediction

    script:
    def shard_args = nshards > 1 ? "--shard ${shard}/${nshards}" : ''
    """
    slidemill-infer ${slide} ${model} --out prediction-${shard} ${shard_args} --device auto --workers ${task.cpus} --log-format json
    """

    stub:
    """
    mkdir -p prediction-${shard} && touch prediction-${shard}/prediction.json prediction-${shard}/report.json
    """
}

process POSTPROCESS {
    // every shard of a slide in one task: their rasters stack into the slide's raster, so size
    // filtering, hole filling and smoothing see whole shapes and the result equals an unsharded run
    tag "${id}"
    label 'cpu'

    input:
    tuple val(id), path(predictions, stageAs: 'predictions/*')

    output:
    tuple val(id), path("${id}.shapes.geojson"), emit: annotations

    script:
    """
    slidemill-postprocess ${predictions} --out ${id}.shapes.geojson --min-area-um2 ${params.min_area_um2} --log-format json
    """

    stub:
    """
    touch ${id}.shapes.geojson ${id}.shapes.report.json
    """
}

process MERGE_ANNOTATIONS {
    tag "${id}"
    label 'cpu'
    publishDir "${params.outdir}/annotations", mode: 'copy'

    input:
    tuple val(id), path(shapes)

    output:
    path "${id}.geojson", emit: annotations
    path "${id}.report.json", emit: report

    script:
    """
    slidemill-merge-annotations ${shapes} --out ${id}.geojson --max-gap-um ${params.max_gap_um} --log-format json
    """

    stub:
    """
    touch ${id}.geojson ${id}.report.json
    """
}

process TO_QUPATH {
    label 'cpu'
    publishDir "${params.outdir}", mode: 'copy'

    input:
    path annotations, stageAs: 'annotations/*'
    path slides, stageAs: 'slides/*'

    output:
    path 'qupath', emit: geojson
    path 'qupath-project', emit: project

    script:
    def slide_args = (slides instanceof List ? slides : [slides]).collect { "--slide ${it}" }.join(' ')
    """
    slidemill-to-qupath ${annotations} --out qupath ${slide_args} --project qupath-project --log-format json
    """

    stub:
    """
    mkdir -p qupath qupath-project && touch qupath/report.json qupath-project/project.qpproj
    """
}

process TO_QUPATH_PROJECT {
    // one image at a time into the one project (maxForks 1: its files are never written by two tasks)
    tag "${id}"
    label 'cpu'
    maxForks 1
    publishDir "${params.outdir}/qupath", mode: 'copy'

    input:
    tuple val(id), path(annotations), path(slide)
    path project

    output:
    path "${id}", emit: geojson

    script:
    """
    slidemill-to-qupath ${annotations} --out ${id} --slide ${slide} --project ${project} --log-format json
    """

    stub:
    """
    mkdir -p ${id} && touch ${id}/report.json
    """
}

workflow {
    if (params.qupath_project) {
        if (params.slides || params.annotations) {
            error "give --qupath_project (its images are the slides, its export the annotations) or --slides, not both"
        }
        project = file(params.qupath_project, checkIfExists: true)
        project = project.isFile() ? project.parent : project  // the folder: its export and scripts are in it
        dirs = params.slide_dir ? file(params.slide_dir, type: 'dir', checkIfExists: true) : []
        dirs = dirs instanceof List ? dirs : [dirs]
        images = LIST_IMAGES(project, dirs).images.splitCsv(header: true, sep: '\t')
            .branch { row -> found: row.found_by; missing: true }  // found_by is empty when not found
        // an image whose slide is nowhere to be found gets no predictions: said, not skipped in silence
        images.missing.subscribe { row ->
            log.warn "entry ${row.id} (${row.name}): its slide is not at ${row.slide}, relative to the project or in --slide_dir; not inferred"
        }
        slides = images.found.map { row -> tuple(row.id, file(row.slide)) }
    } else {
        if (!params.slides) {
            error "give the slides: --slides 'slides/*.svs' (or a QuPath project: --qupath_project DIR)"
        }
        slides = Channel.fromPath(params.slides, checkIfExists: true)
            .map { f -> tuple(f.baseName, f) }
    }
    if (!params.model && !params.annotations && !params.qupath_project) {
        error "give --annotations DIR (to train a model) or --model DIR (an existing one)"
    }

    if (params.model) {
        model = Channel.value(file(params.model, checkIfExists: true))
    } else if (params.qupath_project) {
        TILE_PROJECT(project, dirs)
        model = TRAIN(TILE_PROJECT.out.tilesets.collect()).model
    } else {
        annotated = slides
            .map { id, f -> tuple(id, f, file("${params.annotations}/${id}.geojson")) }
            .filter { id, f, a -> a.exists() }
        TILE(annotated)
        model = TRAIN(TILE.out.tileset.collect()).model
    }

    // one task per slide, or --shards tasks for a slide larger than --large_slide_mb
    jobs = slides.flatMap { id, f ->
        def n = f.size() > params.large_slide_mb * 1024L * 1024L ? params.shards as int : 1
        (0..<n).collect { i -> tuple(id, f, i, n) }
    }
    INFER(jobs, model)
    // wait for every shard of a slide, then post-process them together; a slide with a failed shard
    // is dropped, not cleaned from part of its shards (groupTuple discards incomplete groups)
    parts = INFER.out.prediction
        .map { id, n, prediction -> tuple(groupKey(id, n), prediction) }
        .groupTuple(remainder: false)
        .map { key, folders -> tuple(key.toString(), folders) }
    POSTPROCESS(parts)
    MERGE_ANNOTATIONS(POSTPROCESS.out.annotations)
    if (params.qupath_project) {
        // each image's predictions with its own slide (by entry ID), into the project it came from
        merged = MERGE_ANNOTATIONS.out.annotations.map { f -> tuple(f.baseName, f) }.join(slides)
        TO_QUPATH_PROJECT(merged, project)
    } else {
        TO_QUPATH(MERGE_ANNOTATIONS.out.annotations.collect(), slides.map { id, f -> f }.collect())
    }
}
