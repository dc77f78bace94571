"""Write docs/api.md, the API reference, from the docstrings and signatures
of the public API. Run `python docs/gen_api.py` after changing either;
tests/docs/test_docs.py fails while the file is stale."""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":
    # Run as a script from a checkout: the package is beside docs/. (Imported
    # by the docs test, it must not put the source tree on sys.path: CI's
    # source tree has no compiled core, the installed package has.)
    sys.path.insert(0, str(HERE.parent))

import mmemu                       # noqa: E402
import mmemu.host                  # noqa: E402
import mmemu.program               # noqa: E402
from mmemu import constants        # noqa: E402

CLASSES = ["Machine", "Process", "Thread", "Pin", "Pipe", "Uffd", "UffdMsg", "Resolver", "ExploreResult", "Counterexample",
           "PagemapEntry", "FrameInfo"]
ERRORS = ["MmemuError", "EmulatedSignal", "Sigsegv", "Sigbus", "OutOfMemory", "InvariantError",
          "WouldBlock", "Deadlock", "UffdError"]
FUNCTIONS = ["policy_for", "explore", "rerun"]
PROGRAM = ["check", "run", "describe", "pretty", "dumps", "parse_flags", "format_flags",
           "ProgramError", "PlacementError"]
HOST = ["HostMachine", "Unsupported", "HostError"]


def _annotation(a: object) -> str:
    if isinstance(a, str):
        return a
    return inspect.formatannotation(a)


def _default(v: object) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1 << 20 and not v & (v - 1):
        return f"1 << {v.bit_length() - 1}"        # as the source writes sizes
    return repr(v)


def signature(obj: object, drop_self: bool = False) -> str:
    """The signature as written in the source (annotations kept as text)."""
    try:
        sig = inspect.signature(obj)        # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"
    parts = []
    star_done = False
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    for p in params:
        s = p.name
        if p.kind is p.VAR_POSITIONAL:
            s, star_done = "*" + s, True
        elif p.kind is p.VAR_KEYWORD:
            s = "**" + s
        elif p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.annotation is not p.empty:
            s += ": " + _annotation(p.annotation)
        if p.default is not p.empty:
            s += (" = " if p.annotation is not p.empty else "=") + _default(p.default)
        parts.append(s)
    out = "(" + ", ".join(parts) + ")"
    if sig.return_annotation is not sig.empty and not inspect.isclass(obj):
        out += " -> " + _annotation(sig.return_annotation)
    return out


def doc(obj: object) -> str:
    d = inspect.getdoc(obj)
    return (d.strip() + "\n") if d else ""


def members(cls: type) -> list[tuple[str, object]]:
    """Public methods and properties, in source order, inherited ones after."""
    out, seen = [], set()
    for klass in cls.__mro__:
        if klass is object or klass.__module__ == "builtins":
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") and name not in ("__init__", "__call__", "__enter__"):
                continue
            if name in seen or name == "__init__":
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if inspect.isfunction(value) or isinstance(value, property):
                seen.add(name)
                out.append((name, value))
    return out


def class_section(qual: str, cls: type, level: str = "###") -> list[str]:
    lines = [f"{level} `{qual}{signature(cls)}`", ""]
    if doc(cls):
        lines += [doc(cls)]
    for name, value in members(cls):
        if isinstance(value, property):
            ret = ""
            if value.fget is not None and "return" in getattr(value.fget, "__annotations__", {}):
                ret = ": " + _annotation(value.fget.__annotations__["return"])
            lines += [f"- **`{name}{ret}`** (property)" + (f" — {doc(value).strip()}" if doc(value) else ""), ""]
        else:
            d = doc(value).strip()
            lines += [f"- **`{name}{signature(value, drop_self=True)}`**"]
            if d:
                lines += ["", "  " + d.replace("\n", "\n  ")]
            lines += [""]
    return lines


def function_section(qual: str, fn: object) -> list[str]:
    lines = [f"### `{qual}{signature(fn)}`", ""]
    if doc(fn):
        lines += [doc(fn)]
    return lines


def error_section(qual: str, cls: type) -> list[str]:
    bases = ", ".join(b.__name__ for b in cls.__bases__)
    return [f"### `{qual}({bases})`", "", doc(cls)]


def section(qual: str, obj: object) -> list[str]:
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return error_section(qual, obj)
    if inspect.isclass(obj):
        return class_section(qual, obj)
    return function_section(qual, obj)


def constants_section() -> list[str]:
    groups: dict[str, list[str]] = {}
    for name in constants.__all__:
        groups.setdefault(name.split("_")[0], []).append(name)
    lines = ["## Constants", "",
             "Linux UAPI names with the kernel's values (`mmemu.constants`, all re-exported "
             "at the top level):", ""]
    for prefix, names in groups.items():
        lines += [f"- `{prefix}_*`: " + ", ".join(f"`{n}`" for n in names)]
    return lines + [""]


def generate() -> str:
    lines = ["# API reference", "",
             "Generated from the docstrings and signatures by `python docs/gen_api.py`; "
             "do not edit by hand (`tests/docs/test_docs.py` checks it is current).", "",
             "## `mmemu`", ""]
    for name in CLASSES + FUNCTIONS:
        lines += section(f"mmemu.{name}", getattr(mmemu, name))
    lines += [f"`mmemu.VERSIONS`: the modelled kernel versions, "
              f"{', '.join(mmemu.VERSIONS)}.", ""]
    lines += ["## Errors", ""]
    for name in ERRORS:
        lines += error_section(f"mmemu.{name}", getattr(mmemu, name))
    lines += ["## `mmemu.program`", "", doc(mmemu.program)]
    for name in PROGRAM:
        lines += section(f"mmemu.program.{name}", getattr(mmemu.program, name))
    lines += ["## `mmemu.host`", "", doc(mmemu.host)]
    for name in HOST:
        lines += section(f"mmemu.host.{name}", getattr(mmemu.host.machine, name))
    lines += constants_section()
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"


if __name__ == "__main__":
    (HERE / "api.md").write_text(generate())
    print(f"wrote {HERE / 'api.md'}")
