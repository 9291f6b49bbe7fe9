"""The files that cross a tool boundary, as pydantic models (the JSON Schemas come from these).

Every file carries `"schema": "slidemill/<kind>"` and `"schema_version": "MAJOR.MINOR"`. A reader
accepts any minor version of its major and refuses another major with a message saying so.
Paths inside a manifest are relative to the manifest's folder and never leave it; the one exception
is a refs tileset's `store.slide_path`, an input outside the tileset, which may go up with '..'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .classes import RGB, ClassTable
from .errors import ContractError, InputError
from .files import atomic_write, check_relative_path, require_file
from .geometry import PixelMapping, Region
from .stain import SlideStain, StainMethod, StainParameters

RelPath = Annotated[
    str,
    AfterValidator(check_relative_path),
    Field(description="path relative to this file's folder, '/'-separated, never absolute or '..'",
          # the same rule for JSON Schema users (pydantic's own regex engine has no look-ahead)
          json_schema_extra={"pattern": r"^(?![/\\])(?![A-Za-z]:)(?!(.*/)?\.\.(/|$))[^\\]+$"}),
]


def _check_slide_path(value: str) -> str:
    if not value or "\\" in value or value.startswith("/") or (len(value) > 1 and value[1] == ":"):
        raise ValueError(f"slide path {value!r} must be relative to the manifest's folder, '/'-separated")
    return value


# A refs tileset's slide: an input that lives outside the tileset, so unlike RelPath it may go up
# with '..'; still relative (the tileset folder and the slides folder move together) and '/'-separated.
SlidePath = Annotated[
    str,
    AfterValidator(_check_slide_path),
    Field(json_schema_extra={"pattern": r"^(?![/\\])(?![A-Za-z]:)[^\\]+$"}),
]
Triple = tuple[float, float, float]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Contract(Strict):
    """Base of every exchanged JSON file."""

    KIND: ClassVar[str]
    VERSION: ClassVar[str] = "1.0"
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _check_kind_and_version(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        kind = data.get("schema")
        if kind is not None and kind != f"slidemill/{cls.KIND}":
            raise ValueError(f"this is a {kind!r} file, but a 'slidemill/{cls.KIND}' file is expected")
        version = data.get("schema_version")
        if isinstance(version, str) and version.split(".")[0] != cls.VERSION.split(".")[0]:
            raise ValueError(
                f"schema_version {version} is not supported: this slidemill reads "
                f"slidemill/{cls.KIND} version {cls.VERSION.split('.')[0]}.x; "
                "use the slidemill release that wrote the file, or re-create the file with this one"
            )
        return data


# --- shared pieces -----------------------------------------------------------------------------


class ChannelPick(Strict):
    """One sample plane of the slide that becomes one output channel (grey, or R, G or B)."""

    name: str = Field(description="the channel's name in the file (or 'band N' / 'channel N' when it has none)")
    frame: int = Field(0, ge=0, description="large-image frame index the plane is read from (0: single-frame file)")
    band: int = Field(0, ge=0, description="band (sample) of that frame")
    window: tuple[float, float] | None = Field(
        None, description="stored values mapped linearly to 0 and 255 (clipped, rounded); null: uint8 as stored")


class PixelMeaning(Strict):
    """How the file's samples become the RGB uint8 pixels every tool sees: decided once per slide from
    its metadata (never per region), so one stored value gives one output value everywhere."""

    dtype: str = Field(description="numpy dtype of the stored samples (uint8, uint16, int8, float32, ...)")
    bands: int = Field(ge=1, description="bands per frame as the reader gives them, alpha included")
    frames: int = Field(1, ge=1, description="frames (channel/plane images) in the file")
    alpha: bool = Field(False, description="the frame's last band is alpha: pixels are composited onto white")
    channels: list[ChannelPick] = Field(
        min_length=1, max_length=3, description="1 pick: grey (repeated to RGB); 3 picks: R, G, B")
    z: int | None = Field(None, ge=0, description="Z plane read (IndexZ); null when the file has one")
    t: int | None = Field(None, ge=0, description="time point read (IndexT); null when the file has one")
    window_source: Literal["sample-value-tags", "bits-per-sample", "slide-percentiles"] | None = Field(
        None, description="where the windows come from: the TIFF SMin/SMaxSampleValue tags, the declared "
        "BitsPerSample, or the 0.1 and 99.9 percentiles of each channel over the slide's coarsest stored level")

    @model_validator(mode="after")
    def _one_or_three(self) -> PixelMeaning:
        if len(self.channels) not in (1, 3):
            raise ValueError("pixels.channels must hold 1 (grey) or 3 (RGB) picks")
        return self


class SlideRef(Strict):
    """Which slide a file is about. The slide itself is given to each tool on its command line."""

    name: str = Field(min_length=1, description="the slide's file (or folder) name, without folders")
    width: int = Field(gt=0, description="level-0 width in pixels")
    height: int = Field(gt=0, description="level-0 height in pixels")
    mpp: float | None = Field(None, gt=0, description="level-0 microns per pixel; null when unknown")
    mpp_source: Literal["vendor", "ome", "tiff-resolution", "user", "file"] | None = Field(
        None, description="where mpp came from: vendor metadata, OME-XML PhysicalSizeX, a TIFF resolution tag "
        "that cannot be an image editor's dpi, or --slide-mpp ('file': written before 1.1, source unknown)")
    vendor: str = Field("unknown", description="scanner vendor or file format")
    reader: str = Field("", description="the large-image source that read it")
    series: str | None = Field(None, description="DICOM SeriesInstanceUID read, for a DICOM folder or file")
    pixels: PixelMeaning | None = Field(None, description="how stored samples became RGB (null: before 1.1)")

    @model_validator(mode="after")
    def _plain_name(self) -> SlideRef:
        if "/" in self.name or "\\" in self.name:
            raise ValueError("slide name must be a file name, without folders")
        return self


class Provenance(Strict):
    tool: str
    version: str
    inputs: list[str] = Field(default_factory=list, description="input files, as given")
    parameters: dict[str, Any] = Field(default_factory=dict)


# --- tileset -----------------------------------------------------------------------------------


class TilingParams(Strict):
    mpp: float = Field(gt=0, description="microns per pixel of the tiles")
    tile_size_px: int = Field(gt=0, description="tile width and height in tile pixels")
    overlap_px: int = Field(ge=0, description="overlap of neighbouring tiles in tile pixels")
    tissue_threshold: float | None = Field(
        None, ge=0, le=1, description="minimum tissue fraction of a kept tile; null with all tiles")
    annotated_only: bool = Field(False, description="only tiles touching an annotation were kept")
    background_class: str | None = Field(
        None, description="class given to unannotated pixels; null means they are ignore (sparse)")
    image_format: Literal["png", "jpeg", "tiff"] = "png"
    pad_value: int = Field(255, ge=0, le=255, description="value of padding pixels in images")
    tissue_mode: Literal["brightfield", "darkfield"] | None = Field(
        None, description="how tissue was told from background: darker than glass, or brighter than a dark "
        "background (fluorescence); null: before 1.1 (brightfield)")

    @model_validator(mode="after")
    def _overlap_fits(self) -> TilingParams:
        if self.overlap_px >= self.tile_size_px:
            raise ValueError("overlap_px must be smaller than tile_size_px")
        return self


class TileRecord(Strict):
    index: int = Field(ge=0)
    col: int = Field(ge=0, description="grid column")
    row: int = Field(ge=0, description="grid row")
    x: float = Field(description="level-0 x of the tile's top-left corner")
    y: float = Field(description="level-0 y of the tile's top-left corner")
    width: float = Field(gt=0, description="level-0 width the whole tile (padding included) spans")
    height: float = Field(gt=0, description="level-0 height the whole tile (padding included) spans")
    pad_right_px: int = Field(0, ge=0, description="tile pixels of padding past the slide's right edge")
    pad_bottom_px: int = Field(0, ge=0, description="tile pixels of padding past the slide's bottom edge")
    tissue_fraction: float = Field(ge=0, le=1)
    class_fractions: dict[str, float] = Field(
        default_factory=dict, description="fraction of the tile's pixels per class name (ignore included)")
    image: RelPath | None = Field(None, description="png store: the tile's PNG file; other stores: null (the "
                                  "pixels are row `index` of the container, or read from the slide)")
    mask: RelPath | None = Field(None, description="png store: the mask's PNG file; other stores: null (row "
                                 "`index` of the container's masks)")


StoreKind = Literal["png", "refs", "zarr"]


class TileStoreInfo(Strict):
    """How a tileset keeps its pixels (schema 1.1; a 1.0 manifest is a png store).

    - png: one PNG file per tile image and mask (`TileRecord.image`, `.mask`);
    - zarr: one zarr (v2) container in a zip file, `images` (N, T, T, 3) and `masks` (N, T, T) uint8,
      one chunk per tile, row `TileRecord.index`;
    - refs: no image pixels: they are read from the slide (`slide_path`) at the tile's position;
      masks (if any) in the container as for zarr, and the labelled shapes for random patches.
    """

    kind: StoreKind = "png"
    container: RelPath | None = Field(None, description="the zip file of the zarr container (zarr, refs)")
    image_codec: str | None = Field(None, description="codec of the container's images, e.g. blosc-lz4, jpeg-q95")
    lossless: bool = Field(True, description="the stored pixels equal the slide's (false for a lossy codec)")
    slide_path: SlidePath | None = Field(
        None, description="refs: the slide, relative to this file's folder, '/'-separated. The one manifest path "
        "that may go up with '..': the slide is an input that lives outside the tileset (the tileset's own files "
        "never do); never absolute, so the tileset and the slides folder can move together. train's --slide "
        "gives the slide again when it moved")
    shapes: RelPath | None = Field(None, description="refs: the labelled annotation shapes (JSON, level-0 WKB)")


class TileSet(Contract):
    """A tileset manifest. Its tile rows are in `tiles_file` (1.2: JSON Lines, one `TileRecord` per
    line, written as the tiles come, so neither writer nor reader holds them all as objects) or, in
    manifests before 1.2, inline in `tiles`. Read them with `slidemill.shared.tiletable.read_tile_table`,
    which takes either."""

    KIND: ClassVar[str] = "tileset"
    # 1.1: background classes; slide pixel meaning, series, mpp sources; stores. 1.2: the slide's stain fits;
    # rows in tiles_file
    VERSION: ClassVar[str] = "1.2"
    schema_id: Literal["slidemill/tileset"] = Field("slidemill/tileset", alias="schema")
    schema_version: str = Field("1.2", pattern=r"^1\.\d+$")
    slide: SlideRef
    params: TilingParams
    mapping: PixelMapping = Field(description="tile pixels to level-0 pixels (origin 0; per tile add x, y)")
    classes: ClassTable | None = Field(None, description="null when no annotations were given")
    tissue_mask: RelPath | None = None
    preview: RelPath | None = None
    store: TileStoreInfo = Field(default_factory=TileStoreInfo, description="how the pixels are kept")
    stain: SlideStain | None = Field(
        None, description="the slide's stain colour models (Macenko, Reinhard), fitted once on its tissue thumbnail, "
        "or why not (1.2); null: written before 1.2, no fit recorded")
    tiles: list[TileRecord] = Field(
        default_factory=list, description="the tile rows inline (manifests before 1.2); empty with tiles_file")
    tiles_file: RelPath | None = Field(
        None, description="1.2: the tile rows, JSON Lines: one TileRecord per line in index order, tile_count lines")
    tile_count: int | None = Field(None, ge=0, description="1.2: the number of tiles (lines of tiles_file)")

    @model_validator(mode="after")
    def _store_complete(self) -> TileSet:
        kind = self.store.kind
        if self.tiles_file is not None:
            if self.tiles:
                raise ValueError("tile rows are either inline (tiles) or in tiles_file, not both")
            if self.tile_count is None:
                raise ValueError("a tiles_file needs its tile_count")
        elif self.tile_count is not None and self.tile_count != len(self.tiles):
            raise ValueError(f"tile_count is {self.tile_count} but {len(self.tiles)} tile rows are inline")
        if kind == "zarr" and self.store.container is None:
            raise ValueError("a zarr store needs its container file")
        if kind == "refs" and self.store.slide_path is None:
            raise ValueError("a refs store needs the slide's path")
        check_rows(kind, self.tiles)
        return self


def check_rows(kind: str, rows, start: int = 0) -> None:
    """The per-row rules of a store (png: every tile has its image file; zarr and refs: indices are
    0..n-1 in order, the container's rows), for inline rows and for each chunk of a tiles file."""
    if kind == "png" and any(t.image is None for t in rows):
        raise ValueError("a png store needs an image file for every tile")
    if kind in ("zarr", "refs") and any(t.index != i for i, t in enumerate(rows, start)):
        raise ValueError("tile indices must be 0..n-1 in order (they are the container's rows)")


# --- model card --------------------------------------------------------------------------------


class Normalization(Strict):
    mean: Triple = Field(description="per-channel mean of RGB scaled to 0-1")
    std: Triple = Field(description="per-channel std of RGB scaled to 0-1")


class StainNormalisation(Strict):
    """The stain normalisation a model was trained with (model card 1.2): every tile of a slide went through
    `StainNormaliser(that slide's fit, target)`; infer fits the slide it predicts by the same rule
    (`fit_slide_stain` on `slide_tissue` at `tissue_mpp`) and applies the same transform to every tile."""

    method: StainMethod
    target: StainParameters = Field(description="the target colour model every slide is mapped to")
    target_source: Literal["reference", "training-slides"] = Field(
        description="reference: fitted on --stain-reference; training-slides: pooled from the training slides' "
        "recorded fits")
    reference: str | None = Field(None, description="the reference image's file name (target_source reference)")
    reference_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="its sha256")
    reference_mpp: float | None = Field(None, gt=0, description="the reference's microns per pixel used for its "
                                        "tissue thumbnail")
    pooled_slides: list[str] = Field(default_factory=list, description="the slides whose fits were pooled")
    pooling: str | None = Field(None, description="how the fits were pooled (target_source training-slides)")
    tissue_mpp: float = Field(gt=0, description="the thumbnail rule of every fit (slide_tissue's tissue_mpp)")


class ModelInput(Strict):
    mpp: float = Field(gt=0, description="microns per pixel the model was trained at")
    tile_size_px: int = Field(gt=0, description="tile size the model was trained on")
    channels: Literal[3] = 3
    normalization: Normalization
    slide_channels: list[str] | None = Field(
        None, min_length=1, max_length=3, description="the slide channels the tiles were made of, by name, where "
        "the tilesets chose them (--channel; 1.1): infer reads the same ones when --channel is not given")
    stain_normalisation: StainNormalisation | None = Field(
        None, description="the stain normalisation applied to every tile before the model (1.2); null: none")
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"


class OnnxFile(Strict):
    file: RelPath
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int = Field(gt=0)
    input_name: str = "image"
    output_name: str = "logits"
    max_abs_diff: float | None = Field(
        None, ge=0, description="largest |torch - onnxruntime| logit difference measured at export")


class ClassMetrics(Strict):
    """Validation scores of one class (of the best epoch). dice and iou are null when the class has no
    labelled validation pixel (`no_validation_pixels` true): unknown, not 0. The pixel counts are new in
    model card 1.1 (null in older cards)."""

    dice: float | None = Field(None, ge=0, le=1)
    iou: float | None = Field(None, ge=0, le=1)
    train_pixels: int | None = Field(None, ge=0, description="labelled training pixels of the class (from "
                                     "the tilesets' class fractions)")
    val_pixels: int | None = Field(None, ge=0, description="labelled validation pixels of the class")
    predicted_pixels: int | None = Field(None, ge=0, description="labelled validation pixels predicted as "
                                         "the class")
    no_validation_pixels: bool = Field(False, description="the class has no labelled validation pixel, so it "
                                       "was not scored")
    never_predicted: bool = Field(False, description="the model predicts the class on no validation pixel")


class DataSplit(Strict):
    strategy: Literal["slides", "blocks", "none"]
    train_slides: list[str] = Field(default_factory=list)
    val_slides: list[str] = Field(default_factory=list)
    train_tiles: int = Field(0, ge=0)
    val_tiles: int = Field(0, ge=0)
    block_size_px: float | None = Field(None, description="level-0 block size of a 'blocks' split")
    seed: int | None = None


class TrainingSummary(Strict):
    tilesets: list[str] = Field(default_factory=list, description="tileset folders, as given")
    slides: list[str] = Field(default_factory=list)
    tiles: int = Field(0, ge=0)
    epochs: int = Field(0, ge=0)
    best_epoch: int | None = None
    loss: str = "cross-entropy + dice"
    parameters: dict[str, Any] = Field(default_factory=dict)


class ModelCard(Contract):
    KIND: ClassVar[str] = "model"
    # 1.1: background classes; per-class validation, confusion, reproducibility. 1.2: stain normalisation
    VERSION: ClassVar[str] = "1.2"
    schema_id: Literal["slidemill/model"] = Field("slidemill/model", alias="schema")
    schema_version: str = Field("1.2", pattern=r"^1\.\d+$")
    name: str
    architecture: str = Field(description="segmentation-models-pytorch architecture, e.g. unet")
    encoder: str = Field(description="encoder name, e.g. efficientnet-b0")
    encoder_weights: str | None = None
    classes: ClassTable
    input: ModelInput
    onnx: OnnxFile
    training: TrainingSummary = Field(default_factory=TrainingSummary)
    split: DataSplit = Field(default_factory=lambda: DataSplit(strategy="none"))
    metrics: dict[str, ClassMetrics] = Field(default_factory=dict, description="validation metrics per class")
    mean_iou: float | None = Field(None, ge=0, le=1, description="mean IoU over the classes with validation "
                                   "pixels (classes without any are left out, not counted as 0)")
    # new in 1.1 (absent from 1.0 cards)
    confusion_matrix: list[list[int]] | None = Field(
        None, description="validation pixel counts of the best epoch: rows truth, columns prediction, in label "
        "order of the trainable classes")
    majority_baseline_mean_iou: float | None = Field(
        None, ge=0, le=1, description="the mean IoU a model predicting the most common validation class "
        "everywhere would get")
    warnings: list[str] = Field(default_factory=list, description="what a reader of the metrics must know: "
                                "classes never predicted, classes not validated, a result near the baseline")
    reproducibility: dict[str, Any] = Field(
        default_factory=dict, description="what the same seed's result depends on: torch version, compute "
        "threads, device, deterministic flags")


# --- prediction --------------------------------------------------------------------------------


class RasterFile(Strict):
    file: RelPath
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    bands: int = Field(1, gt=0)
    dtype: Literal["uint8"] = "uint8"


class ModelRef(Strict):
    name: str
    architecture: str
    encoder: str
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Shard(Strict):
    index: int = Field(ge=0)
    count: int = Field(gt=0)

    @model_validator(mode="after")
    def _in_range(self) -> Shard:
        if self.index >= self.count:
            raise ValueError(f"shard index {self.index} is not below the shard count {self.count}")
        return self


class StainApplied(Strict):
    """The stain normalisation infer applied to every tile (prediction 1.2): the slide's own fit (source) to
    the model card's target."""

    method: StainMethod
    source: StainParameters = Field(description="the slide's fit, by fit_slide_stain on its tissue thumbnail")
    target: StainParameters = Field(description="the model card's target")
    tissue_mpp: float = Field(gt=0, description="the thumbnail rule of the fit")
    thumbnail_scale: float = Field(gt=0, description="level-0 pixels per thumbnail pixel of the fit")


class Prediction(Contract):
    """Label raster: class label per pixel, 255 where nothing was predicted (no tissue, other shard).
    Probability raster: one band per trainable class in label order, 0-255 for 0-1."""

    KIND: ClassVar[str] = "prediction"
    # 1.1: background classes; slide pixel meaning, series, mpp sources. 1.2: the stain normalisation applied
    VERSION: ClassVar[str] = "1.2"
    schema_id: Literal["slidemill/prediction"] = Field("slidemill/prediction", alias="schema")
    schema_version: str = Field("1.2", pattern=r"^1\.\d+$")
    slide: SlideRef
    model: ModelRef
    classes: ClassTable
    mpp: float = Field(gt=0, description="microns per pixel of the rasters")
    mapping: PixelMapping
    region: Region = Field(description="level-0 rectangle the rasters cover")
    shard: Shard | None = None
    tissue_only: bool = True
    labels: RasterFile
    probabilities: RasterFile | None = None
    preview: RelPath | None = None
    stain: StainApplied | None = Field(None, description="the stain normalisation applied to the tiles (1.2); "
                                       "null: none")


# --- annotations (GeoJSON) ---------------------------------------------------------------------

Position = tuple[float, float]
Ring = Annotated[list[Position], Field(min_length=4)]


def _check_rings(rings: list[list[Position]]) -> None:
    for ring in rings:
        if ring[0] != ring[-1]:
            raise ValueError("a polygon ring is not closed (first and last points differ)")


class ImagePlane(Strict):
    """QuPath's image plane of an object (z-stacks, time series; c = -1 means all channels)."""

    c: int = -1
    z: int = Field(0, ge=0)
    t: int = Field(0, ge=0)


class PolygonGeometry(Strict):
    type: Literal["Polygon"]
    coordinates: Annotated[list[Ring], Field(min_length=1)]
    plane: ImagePlane | None = Field(None, description="QuPath's plane; absent on the default plane (1.1)")

    @model_validator(mode="after")
    def _closed(self) -> PolygonGeometry:
        _check_rings(self.coordinates)
        return self


class MultiPolygonGeometry(Strict):
    type: Literal["MultiPolygon"]
    coordinates: Annotated[list[Annotated[list[Ring], Field(min_length=1)]], Field(min_length=1)]
    plane: ImagePlane | None = Field(None, description="QuPath's plane; absent on the default plane (1.1)")

    @model_validator(mode="after")
    def _closed(self) -> MultiPolygonGeometry:
        for polygon in self.coordinates:
            _check_rings(polygon)
        return self


class Classification(Strict):
    """A class as QuPath writes it: `name`, or for a derived class its parts in `names` (1.1), whose
    full name is the parts joined by ": " ("Tumor: Positive")."""

    name: str | None = Field(None, min_length=1)
    names: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, min_length=2, description="the parts of a derived class, outermost first (1.1)")
    color: RGB

    @model_validator(mode="after")
    def _one_name(self) -> Classification:
        if (self.name is None) == (self.names is None):
            raise ValueError("a classification has either 'name' or 'names'")
        return self

    @property
    def full_name(self) -> str:
        return self.name if self.name is not None else ": ".join(self.names or [])


class FeatureProperties(BaseModel):
    model_config = ConfigDict(extra="allow")
    objectType: Literal["annotation", "detection", "cell", "tile"] = "annotation"
    name: str | None = None
    classification: Classification | None = None
    isLocked: bool | None = None
    measurements: dict[str, float] = Field(default_factory=dict)
    metadata: dict[str, str] | None = None


class Feature(Strict):
    type: Literal["Feature"] = "Feature"
    id: str
    geometry: Annotated[PolygonGeometry | MultiPolygonGeometry, Field(discriminator="type")]
    nucleusGeometry: Annotated[PolygonGeometry | MultiPolygonGeometry | None, Field(discriminator="type")] = Field(
        None, description="a cell's nucleus outline, level-0 pixels (1.1)")
    properties: FeatureProperties


class AnnotationSet(Contract):
    """A GeoJSON FeatureCollection in level-0 pixels; extra top-level members carry slidemill's data."""

    KIND: ClassVar[str] = "annotations"
    VERSION: ClassVar[str] = "1.1"  # 1.1: derived classes, planes, nucleusGeometry; slide pixels
    schema_id: Literal["slidemill/annotations"] = Field("slidemill/annotations", alias="schema")
    schema_version: str = Field("1.1", pattern=r"^1\.\d+$")
    type: Literal["FeatureCollection"] = "FeatureCollection"
    slide: SlideRef | None = None
    mpp: float | None = Field(None, gt=0, description="level-0 microns per pixel used for measurements")
    provenance: Provenance | None = None
    features: list[Feature]


# --- report ------------------------------------------------------------------------------------


class ReportItem(Strict):
    """One input of a run that handles several (a slide of a batch, an image of a QuPath project)."""

    id: str | None = Field(None, description="its identifier where it has one (a QuPath entry ID)")
    name: str
    status: Literal["ok", "skipped", "failed"]
    reason: str | None = Field(None, description="why it was skipped or failed, as one paragraph")
    inputs: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    counts: dict[str, float] = Field(default_factory=dict)


class Report(Contract):
    KIND: ClassVar[str] = "report"
    VERSION: ClassVar[str] = "1.1"  # 1.1: items (one row per input of a batch)
    schema_id: Literal["slidemill/report"] = Field("slidemill/report", alias="schema")
    schema_version: str = Field("1.1", pattern=r"^1\.\d+$")
    tool: str
    version: str
    command: list[str] = Field(default_factory=list, description="argv of the run")
    status: Literal["ok", "failed"] = "ok"
    started_at: str = Field(description="ISO 8601, UTC")
    finished_at: str = Field(description="ISO 8601, UTC")
    duration_s: float = Field(ge=0)
    inputs: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    counts: dict[str, float] = Field(default_factory=dict)
    timings_s: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)
    error: str | None = None
    items: list[ReportItem] = Field(default_factory=list, description="one row per input of a batch run, "
                                    "with its status; empty for a run of one input")


CONTRACTS: dict[str, type[Contract]] = {
    cls.KIND: cls for cls in (TileSet, ModelCard, Prediction, AnnotationSet, Report)
}

C = TypeVar("C", bound=Contract)


def describe_validation_error(exc: ValidationError, limit: int = 3) -> str:
    problems = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "the file"
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {msg}")
    more = len(exc.errors()) - limit
    text = "; ".join(problems)
    return text + (f"; and {more} more problem(s)" if more > 0 else "")


def parse_contract(data: bytes | str, model: type[C], *, path: str | Path = "<input>") -> C:
    """Validate JSON text as `model`, raising ContractError with a paragraph naming `path`."""
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ContractError(f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
                            path=path, fix="Check that the file was written completely") from None
    if not isinstance(raw, dict) or "schema" not in raw:
        raise ContractError(f"is not a slidemill/{model.KIND} file (no 'schema' member)", path=path,
                            fix=f"Give a file written by slidemill, with \"schema\": \"slidemill/{model.KIND}\"")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ContractError(f"is not a valid slidemill/{model.KIND} file: {describe_validation_error(exc)}",
                            path=path, fix="Re-create it with the slidemill tool that writes it") from None


def load_contract(path: str | Path, model: type[C]) -> C:
    """Read and validate a contract file before any work is done."""
    path = require_file(path, f"slidemill/{model.KIND} file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", path=path) from None
    return parse_contract(data, model, path=path)


def dump_contract(obj: Contract, *, indent: int | None = 2) -> str:
    # None fields are left out: they equal the defaults, and QuPath chokes on null properties.
    return obj.model_dump_json(by_alias=True, indent=indent, exclude_none=True) + "\n"


def save_contract(obj: Contract, path: str | Path, *, indent: int | None = 2) -> Path:
    """Write a contract file atomically."""
    path = Path(path)
    with atomic_write(path) as handle:
        handle.write(dump_contract(obj, indent=indent))
    return path
