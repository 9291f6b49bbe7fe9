"""One declaration of a tool's options: the pydantic config is it, and the typer command is made from it.

Each field of a tool's config model becomes one command-line parameter:

- the field's name, spelled `--field-name`, unless a `Cli(...)` in its `Annotated` metadata names it
  (`Cli("--out", "-o")`), or makes it a positional argument (`Cli(argument=True, metavar="SLIDE")`);
- its description is the help (first letter raised, a full stop added), its default the shown default
  (`Cli(shown_default="0.5")` for a default the config computes, or one whose being typed matters:
  the option is then passed only when typed, so the config's `model_fields_set` says so),
  `ge`/`gt`/`le`/`lt` the accepted range (an open end is checked by the config itself), a `Literal`
  its choices (shown as `a|b`), a list a repeatable option, a bool a flag (`Cli(off="--everywhere")`
  adds its negative spelling); what the command refuses while parsing is said as slidemill says
  every user error (`UsageCommand`);
- `Cli(parse=f)` turns the typed text into the field's value (`X,Y,W,H` into a Region), and
  `Cli(must_exist="slide")` checks a path in slidemill's words before anything else;
- `Cli(api_only=True)` keeps a field off the command line (values only a notebook can give);
  `Cli(optional=True)` lets the command omit a required field (its `main` then builds the config, as
  tile's SLIDE, which `--qupath-project` replaces); `Cli(batch=True)` on a slide argument takes several
  slides or a folder of them, each run into `OUT/<slide name>/` (slidemill.shared.batch).

`config_command` adds the frame's own options (`--version`, `--log-format`, `--debug`) to every tool,
builds the config inside `cli_run` (a ValidationError is exit 2 naming the options as typed, through
`option_error`) and hands it to the tool's `main`. The options every slide-reading tool shares are fields
declared once here (`SlideOptions`), like `Workers`, `DeviceField` and `OVERWRITE`.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
import typer
import typer.core
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

try:  # recent typer carries its own copy of click, and raises that copy's exceptions
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - typer on the real click
    from click import exceptions as click_exceptions

from .batch import expand_slides, is_batch, run_batch
from .cli import DebugOption, LogFormat, LogFormatOption, cli_run, existing_path, option_error, version_option
from .errors import InputError


@dataclass(frozen=True)
class Cli:
    """How one config field is typed on the command line (see the module docs)."""

    names: tuple[str, ...] = ()
    argument: bool = False
    metavar: str | None = None
    off: str | None = None
    shown_default: str | None = None
    parse: Callable[[str], Any] | None = None
    must_exist: str | None = None
    api_only: bool = False
    optional: bool = False
    batch: bool = False

    def __init__(self, *names: str, argument: bool = False, metavar: str | None = None, off: str | None = None,
                 shown_default: str | None = None, parse: Callable[[str], Any] | None = None,
                 must_exist: str | None = None, api_only: bool = False, optional: bool = False,
                 batch: bool = False):
        for key, value in dict(names=names, argument=argument, metavar=metavar, off=off, shown_default=shown_default,
                               parse=parse, must_exist=must_exist, api_only=api_only, optional=optional,
                               batch=batch).items():
            object.__setattr__(self, key, value)


API_ONLY = Cli(api_only=True)


# --- the options several tools share, declared once ------------------------------------------------

def workers_field(default: int, what: str, *, le: int = 256) -> Any:
    """`--workers`: how many of `what` run at once; 0 means one per CPU core."""
    return Field(default, ge=0, le=le, description=f"{what}; 0 means one per CPU core")


DeviceName = Literal["auto", "cpu", "cuda"]


def device_field(what: str = "auto uses CUDA when present") -> Any:
    """`--device auto|cpu|cuda`."""
    return Field("auto", description=what)


def overwrite_field(what: str = "output") -> Any:
    """`--overwrite`: replace an existing output."""
    return Field(False, description=f"replace an existing {what}")


SlideMpp = Annotated[float | None, Field(gt=0, le=1000)]


class SlideOptions(BaseModel):
    """What a pixel of the slide means (slidemill.shared.slide.open_slide): the same options in every tool
    that opens slides (tile, infer)."""

    slide_mpp: SlideMpp = Field(None, description="level-0 microns per pixel of the slide, when the file lacks it "
                                "(or to override it)")
    channels: Annotated[list[str] | None, Cli("--channel", metavar="NAME|INDEX")] = Field(
        None, description="channel to read, by name or 0-based index: once for a grey image, three times for R, G, B "
        "(fluorescence, OME-TIFF/QPTIFF channels); needed when the file is not plain grey or RGB")
    z: int | None = Field(None, ge=0, description="Z plane to read (0-based), for files with several")
    t: int | None = Field(None, ge=0, description="time point to read (0-based), for files with several")
    dicom_series: Annotated[str | None, Cli(metavar="UID")] = Field(
        None, description="SeriesInstanceUID to read from a DICOM folder holding several series")
    allow_upsampling: bool = Field(False, description="allow a target resolution more than 2x finer than the "
                                   "slide's (refused otherwise)")
    tissue_mode: Literal["auto", "brightfield", "darkfield"] = Field(
        "auto", description="tissue is darker than glass (brightfield) or brighter than a dark background "
        "(darkfield, fluorescence); auto: darkfield when the thumbnail's median grey level is below 100")

    @model_validator(mode="after")
    def _channel_count(self):
        if self.channels is not None and len(self.channels) not in (1, 3):
            raise ValueError(f"channels was given {len(self.channels)} times; give it once (grey) or three "
                             "times (R, G, B)")
        return self


# --- the command made from a config ------------------------------------------------------------------

FRAME_OPTIONS = ("version", "log_format", "debug")


def cli_of(info: FieldInfo) -> Cli:
    return next((m for m in info.metadata if isinstance(m, Cli)), Cli())


def _unwrap_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def bounds(info: FieldInfo) -> dict[str, float]:
    """The field's ge/gt/le/lt constraints, by name."""
    found: dict[str, float] = {}
    for m in info.metadata:
        for key in ("ge", "gt", "le", "lt"):
            if isinstance(m, getattr(annotated_types, key.capitalize())):
                found[key] = getattr(m, key)
    return found


def help_text(description: str | None) -> str:
    text = (description or "").strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


METAVARS = {Path: "PATH", int: "INT", float: "FLOAT", str: "TEXT"}


def option_names(name: str, info: FieldInfo) -> list[str]:
    spec = cli_of(info)
    return list(spec.names) or ["--" + name.replace("_", "-")]


def spelling(name: str, info: FieldInfo) -> str:
    """How the user types this field: its first long option name, or its argument's metavar."""
    spec = cli_of(info)
    if spec.argument:
        return spec.metavar or name.upper()
    return next((n for n in option_names(name, info) if n.startswith("--")), option_names(name, info)[0])


def command_fields(config: type[BaseModel]) -> dict[str, FieldInfo]:
    """The config's fields that are command-line parameters (all but the api-only ones), in order:
    positional arguments first, then the tool's own options, then those it shares (SlideOptions)."""
    own = set(config.__annotations__)
    fields = {n: f for n, f in config.model_fields.items() if not cli_of(f).api_only}
    return dict(sorted(fields.items(), key=lambda item: (not cli_of(item[1]).argument, item[0] not in own)))


def _parameter(name: str, info: FieldInfo) -> inspect.Parameter:
    spec = cli_of(info)
    tp = _unwrap_optional(info.annotation)
    is_list = typing.get_origin(tp) is list
    item = typing.get_args(tp)[0] if is_list else tp
    if spec.batch:  # one slide, several, or a folder of them
        tp, is_list = list[item], True
    if spec.parse is not None:
        item = str
    required = info.is_required() and not spec.optional
    default = None if (info.is_required() or info.default_factory is not None) else info.default
    if spec.shown_default is not None:  # the config's default applies; a value typed is one the user chose
        default = None
    text = help_text(info.description)
    shown: bool | str = default is not None and not (item is bool and default is False)
    if spec.shown_default is not None:
        shown = spec.shown_default
    if typing.get_origin(item) is Literal:
        metavar = spec.metavar or "|".join(map(str, typing.get_args(item)))
    else:
        metavar = spec.metavar or (None if item is bool else METAVARS.get(item))
    limits = bounds(info)
    kwargs: dict[str, Any] = {"help": text, "show_default": shown, "metavar": metavar}
    if not spec.argument and not is_list and item in (int, float):
        lo = limits.get("ge", limits.get("gt"))
        hi = limits.get("le", limits.get("lt"))
        if lo is not None:
            kwargs["min"] = lo
        if hi is not None:
            kwargs["max"] = hi
    if spec.argument:
        param_info = typer.Argument(**kwargs)
        annotation = list[item] if is_list else (item if required else item | None)
    else:
        names = option_names(name, info)
        if item is bool and spec.off:
            names = [f"{names[0]}/{spec.off}", *names[1:]]
        param_info = typer.Option(*names, **kwargs)
        annotation = (list[item] | None) if is_list else (item if default is not None else item | None)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[annotation, param_info],
                             default=inspect.Parameter.empty if (required and spec.argument) or
                             (required and not is_list) else default)


def config_values(config: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """The typed values of the config's fields, as the config takes them: options not given are left out
    (the config's defaults apply), `parse` applied."""
    out: dict[str, Any] = {}
    for name, info in command_fields(config).items():
        value = values.get(name)
        if value is None or value == []:
            continue
        spec = cli_of(info)
        if spec.must_exist:
            for path in value if isinstance(value, list) else [value]:
                existing_path(Path(path), spec.must_exist)
        if spec.parse is not None:
            value = [spec.parse(v) for v in value] if isinstance(value, list) else spec.parse(value)
        out[name] = value
    return out


def build_config(config: type[BaseModel], values: dict[str, Any], *, tool: str) -> BaseModel:
    """The config from typed values; a ValidationError becomes exit 2 naming the options as typed."""
    try:
        return config(**values)
    except ValidationError as exc:
        # field names in a message are replaced by the options: those that cannot be an English word
        # (an underscore in them) or that the command spells otherwise
        spellings = {n: spelling(n, f) for n, f in config.model_fields.items()}
        spellings = {n: s for n, s in spellings.items() if "_" in n or s != "--" + n}
        raise option_error(exc, spellings, tool=tool) from None


def config_command(app: typer.Typer, config: type[BaseModel], *, tool: str, main: Callable[..., None],
                   extra: list[inspect.Parameter] | None = None, doc: str | None = None) -> Callable[..., None]:
    """Register on `app` the command whose parameters are `config`'s fields (see the module docs), then
    `extra` (command-only options, typer style), then the frame's `--version`, `--log-format`, `--debug`.
    The command builds the config and calls `main(config, **extra values)` inside `cli_run`; `main` may
    take `values` (the typed field values, before the config) to build the config itself."""
    extra = list(extra or [])
    params = [_parameter(n, f) for n, f in command_fields(config).items()] + extra + [
        inspect.Parameter("version", inspect.Parameter.KEYWORD_ONLY, annotation=version_option(tool), default=False),
        inspect.Parameter("log_format", inspect.Parameter.KEYWORD_ONLY, annotation=LogFormatOption,
                          default=LogFormat.text),
        inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, annotation=DebugOption, default=False),
    ]
    extra_names = [p.name for p in extra]
    takes_values = "values" in inspect.signature(main).parameters
    batch = next((n for n, f in command_fields(config).items() if cli_of(f).batch), None)

    def command(**typed: Any) -> None:
        with cli_run(tool, log_format=typed["log_format"], debug=typed["debug"]):
            values = config_values(config, typed)
            extras = {n: typed[n] for n in extra_names}

            def call(these: dict[str, Any]):
                if takes_values:
                    return main(values=these, **extras)
                return main(build_config(config, these, tool=tool), **extras)

            if batch is None or batch not in values or not is_batch(values[batch]):
                if batch in values:
                    values[batch] = values[batch][0]
                call(values)
                return
            if values.get("out") is None:
                raise InputError("several slides need an output folder", fix="Pass --out DIR")
            slides = expand_slides(values[batch])
            run_batch(tool, slides, Path(values["out"]), overwrite=bool(values.get("overwrite")), argv=sys.argv,
                      run_one=lambda slide, folder: call({**values, batch: slide, "out": folder}) or {})

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    command.__name__ = "main"
    app.command(cls=type("ToolCommand", (UsageCommand,), {"tool": tool}))(command)
    return command


class UsageCommand(typer.core.TyperCommand):
    """A typer command whose parse errors (an unknown option, a bad value, a missing argument) are
    slidemill's one paragraph on stderr naming the option and the value typed, exit 2, like every
    other user error (click prints its usage block and `Error: ...`)."""

    tool = "the tool"

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(args=argv, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)
        except click_exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click_exceptions.ClickException as exc:
            print(f"error: {usage_paragraph(exc, argv, self.tool)}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except click_exceptions.Abort:
            print("Aborted!", file=sys.stderr)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def usage_paragraph(exc, argv: list[str], prog: str | None) -> str:
    """`--class-weights sometimes: 'sometimes' is not one of 'none', 'auto'. See slidemill-train --help.`"""
    message = exc.format_message()
    param = getattr(exc, "param", None)
    if isinstance(exc, click_exceptions.BadParameter) and not isinstance(exc, click_exceptions.MissingParameter) \
            and param is not None:
        names = [n for n in getattr(param, "opts", []) if n.startswith("--")] or [param.human_readable_name]
        typed = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in param.opts), None)
        typed = typed or next((a.split("=", 1)[1] for a in argv for n in param.opts if a.startswith(n + "=")), None)
        reason = exc.message.removeprefix("Value error, ")
        message = f"{names[0]}{'' if typed is None else ' ' + typed}: {reason[:1].lower()}{reason[1:]}"
    return " ".join(f"{message.rstrip('.')}. See {prog} --help.".split())
