"""`slidemill TOOL ARGS...`: one command in front of every installed tool.

Tools are found through the `slidemill.tools` entry-point group (as large_image finds its tile
sources), so an image that carries only `slidemill-tile` offers only `slidemill tile`. `slidemill tile
ARGS` runs exactly what `slidemill-tile ARGS` runs: the same typer app, the same exit codes.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points

from .cli import package_version

GROUP = "slidemill.tools"


def installed_tools() -> dict[str, EntryPoint]:
    """{tool name: entry point of its typer app}, sorted by name."""
    return {ep.name: ep for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name)}


def _summary(ep: EntryPoint) -> str:
    # the distribution's one-line summary: listing tools must not import torch
    dist = getattr(ep, "dist", None)
    text = (dist.metadata.get("Summary") if dist is not None else None) or ""
    return text.removeprefix("slidemill's ").strip()


def usage(tools: dict[str, EntryPoint]) -> str:
    lines = ["Usage: slidemill TOOL [ARGS]...", "",
             "Runs one slidemill tool; `slidemill TOOL --help` shows its options.", "", "Tools:"]
    width = max((len(n) for n in tools), default=0)
    lines += [f"  {name:<{width}}  {_summary(ep)}" for name, ep in tools.items()] or ["  (none installed)"]
    lines += ["", "Options:", "  --version  Show the version and exit.", "  --help     Show this message and exit."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    tools = installed_tools()
    if not args:
        print(usage(tools), file=sys.stderr)
        return 2
    if args[0] in {"-h", "--help"}:
        print(usage(tools))
        return 0
    if args[0] == "--version":
        print(f"slidemill {package_version('slidemill-shared')}")
        return 0
    name, rest = args[0], args[1:]
    if name not in tools:
        known = ", ".join(tools) or "none"
        print(f"Error: slidemill has no tool {name!r} here (installed: {known}). "
              "Run `slidemill --help` for the list.", file=sys.stderr)
        return 2
    app = tools[name].load()
    try:
        app(args=rest, prog_name=f"slidemill {name}")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
