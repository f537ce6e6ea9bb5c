"""Command-line flags generated from the spec models, and the options every command shares.

The naming rule: a spec field's flag is ``--`` + the nested spec's ``flag_prefix`` + the field's
name with ``_`` written ``-`` (``train.batch_size`` is ``--batch-size``, ``pruning.synflow.rounds``
is ``--synflow-rounds``), unless the field declares its own with :class:`~prunelab.spec.Flag`
(``treatment.kind`` is ``--treatment``). Types, defaults and help come from the field; choices
and their help from the registry the field names (:func:`~prunelab.spec.registered`). Every flag
defaults to "not given", so a config file's values stand unless a flag overrides them.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:  # the spec machinery (pydantic) is imported when a command with spec flags is built
    from prunelab.spec import FrozenSpec, RegistryRef


# commands ------------------------------------------------------------------------------------------
class _ReadableHelp:
    """Help as people read it: a flag takes no value, so it shows no type label (typer's ``<bool>``),
    --help included; and every flag is shown whole, whatever the terminal's width."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option

    def get_params(self, ctx):
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params

    def format_help(self, ctx, formatter) -> None:
        """Typer's panels where every flag fits whole; else click's plain layout, which puts a long
        flag's help on the next line. A panel too narrow cuts flag names (``--slimming-min-chann…``),
        and a flag must copy-paste whole at any width."""
        if getattr(self, "rich_markup_mode", None) is not None and not _panel_fits(self, ctx):
            typer_class = TyperGroup if isinstance(self, TyperGroup) else TyperCommand
            return super(typer_class, self).format_help(ctx, formatter)  # click's own layout
        return super().format_help(ctx, formatter)  # type: ignore[misc]


#: the narrowest help column a panel may leave (else its flags and types would be cut instead)
MIN_HELP_WIDTH = 16


def _panel_fits(command, ctx) -> bool:
    """Whether typer's options panel shows every flag and type whole at the console's width: the
    widest flag, negative flag, short flag and type, each column's padding, the panel's borders and
    a help column as wide as its longest word (a path; at least :data:`MIN_HELP_WIDTH`, at most 40)."""
    from typer import rich_utils

    params = command.get_params(ctx)
    if not params:
        return True

    def widest(values) -> int:
        return max((len(v) for v in values), default=0)

    columns = [
        widest(",".join(o for o in p.opts if o.startswith("--")) for p in params),
        widest(",".join(o for o in p.opts if not o.startswith("--")) for p in params),
        widest(",".join(p.secondary_opts) for p in params),
        widest(_type_label(p, ctx) for p in params),
    ]
    used = sum(w + 2 for w in columns if w) + 4 + (2 if any(p.required for p in params) else 0)
    words = widest(word for p in params for word in (getattr(p, "help", None) or "").split())
    return used + max(MIN_HELP_WIDTH, min(words, 40)) <= rich_utils._get_rich_console().width


def _type_label(param, ctx) -> str:
    """The type column typer shows for ``param`` (``INT``, ``FLOAT RANGE [x>=1]``)."""
    label = param.display_type_rich(ctx=ctx) or ""
    ranged = getattr(param, "_get_number_range_help_str", lambda: "")()
    return f"{label} [{ranged}]" if ranged else label


class Command(_ReadableHelp, TyperCommand):
    """A prunelab command."""


class Group(_ReadableHelp, TyperGroup):
    """A group of prunelab commands (``data``)."""


# options shared by commands ------------------------------------------------------------------------
# Defined here once, each with what it does, and given to every command that can use it: --root to
# the commands reading or writing results, --data-dir and --threads to those that load data or build
# models, --device to those that train or time models.


def _data_dir_callback(ctx: typer.Context, value: Path | None) -> Path | None:
    """--data-dir counts for every dataset lookup of the command (a model's vocabulary trained on
    the data's text too), until the command ends."""
    if value is not None:
        from prunelab.cache import search_data_in

        ctx.call_on_close(search_data_in(value))
    return value


def _threads_callback(value: int | None) -> int | None:
    if value is not None:
        from prunelab.threads import set_threads

        set_threads(value)
    return value


Root = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional here on Python 3.10
    typer.Option("--root", help="Results folder (else $PRUNELAB_HOME, else ~/.prunelab/runs)."),
]
DataDir = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--data-dir",
        help="Folder holding the dataset files, searched first (else $PRUNELAB_DATA, the cache, ...).",
        callback=_data_dir_callback,
    ),
]
Threads = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for torch (default: the CPUs this process may use, from affinity and cgroup limits).",
        callback=_threads_callback,
    ),
]
DEVICES = ("auto", "cpu", "cuda")


def _device_callback(value: str) -> str:
    if value not in DEVICES:
        from prunelab.errors import SpecError

        raise SpecError(f"--device {value!r}: use {', '.join(DEVICES)}")
    return value


Device = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where models run: auto (a CUDA GPU when there is one), cpu or cuda.",
        callback=_device_callback,
    ),
]
Progress = Annotated[bool, typer.Option(help="Show progress bars.")]
Config = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--config", help="TOML/YAML spec file; flags given override it."),
]


def default_of(target: str, param: str) -> Any:
    """The default of ``param`` of the function ``target`` (``"module:function"``), read when a
    command is built: a command whose option leaves the choice to the domain says what it is."""
    import importlib

    module, _, name = target.partition(":")
    return inspect.signature(getattr(importlib.import_module(module), name)).parameters[param].default


# flags from specs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpecFlag:
    """One generated flag: the spec field it sets and how."""

    path: tuple[str, ...]  # the field's path in the spec, e.g. ("pruning", "rate")
    param: str  # the command function's parameter name
    decls: tuple[str, ...]  # e.g. ("--rate",) or ("--nesterov/--no-nesterov",)
    kind: type  # what the command line parses: str, int, float or bool
    help: str
    panel: str
    default: Any
    parse: Callable[[str], Mapping[str, Any]] | None = None

    @property
    def name(self) -> str:
        return self.decls[0].split("/")[0]

    def updates(self, value: Any) -> dict[str, Any]:
        """The owning spec's field updates for the given value."""
        if self.parse is not None:
            return dict(self.parse(value))
        return {self.path[-1]: value}


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _default_text(info) -> str:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    value = info.default_factory() if info.default_factory is not None else info.default
    if value is None or value is PydanticUndefined:
        return ""
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, BaseModel):
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _help(info, ref: RegistryRef | None, literal: tuple | None) -> str:
    text = (info.description or "").rstrip(".")
    text = text[:1].upper() + text[1:]
    if ref is not None:
        names = ", ".join([*ref.get().names(), *(usage for usage, _ in ref.get().forms())])
        forms = f"; or {', '.join(ref.forms())}" if ref.forms else ""
        see = f" (see `{ref.listing}`)" if ref.listing else ""
        text += f". One of: {names}{forms}{see}"
    elif literal:
        text += f". One of: {', '.join(map(str, literal))}"
    return text + "."


def spec_flags(
    spec: type[FrozenSpec], *, only: Iterable[str] | None = None, skip: Iterable[str] = ()
) -> list[SpecFlag]:
    """The flags of every leaf field of ``spec`` (nested specs flattened), optionally only the
    top-level fields in ``only`` and without those in ``skip``."""
    only = None if only is None else set(only)
    flags: list[SpecFlag] = []
    _walk(spec, (), spec.flag_prefix, flags, only, set(skip))
    seen: dict[str, SpecFlag] = {}
    for f in flags:
        for decl in f.decls:
            for name in decl.split("/"):
                if name in seen:
                    raise TypeError(f"flag {name} is generated for both {seen[name].path} and {f.path}")
                seen[name] = f
    return flags


def _walk(spec, path, prefix, out, only, skip) -> None:
    from prunelab.spec import Flag, FrozenSpec, RegistryRef, container_of, unwrap

    for name, info in spec.model_fields.items():
        here = (*path, name)
        if (not path and only is not None and name not in only) or ".".join(here) in skip:
            continue
        base, _, metadata = unwrap(info.annotation)
        metadata = [*metadata, *info.metadata]
        if isinstance(base, type) and issubclass(base, FrozenSpec):
            _walk(base, here, prefix + base.flag_prefix, out, only, skip)
            continue
        if typing.get_origin(base) is tuple:  # a list of names: the registry is on the elements
            metadata += unwrap(typing.get_args(base)[0])[2]
        flag = next((m for m in metadata if isinstance(m, Flag)), Flag())
        ref = next((m for m in metadata if isinstance(m, RegistryRef)), None)
        literal = typing.get_args(base) if typing.get_origin(base) is typing.Literal else None
        kind = base if base in (bool, int, float) else str
        if flag.parse is not None:  # the field reads its own text form (e.g. names or a strategy)
            kind = str
        elif container_of(info.annotation) is None and kind is str and base is not str and not literal:
            raise TypeError(f"spec field {'.'.join(here)} has type {base!r}, which has no command-line form")
        flag_name = flag.name or prefix + _kebab(name)
        names = (flag_name, *flag.aliases)
        if kind is bool:
            decls = ("/".join((f"--{flag_name}", f"--no-{flag_name}")),)
        else:
            decls = tuple(f"--{n}" for n in names)
        out.append(
            SpecFlag(
                path=here,
                param=flag_name.replace("-", "_"),
                decls=decls,
                kind=kind,
                help=_help(info, ref, literal),
                panel=f"{path[0] if path else 'experiment'} options",
                default=_default_text(info),
                parse=flag.parse,
            )
        )


def flag_values(flags: Iterable[SpecFlag], given: Mapping[str, Any]) -> dict[str, Any]:
    """The nested spec values set by the flags given (those that are not None)."""
    values: dict[str, Any] = {}
    for f in flags:
        value = given.get(f.param)
        if value is None:
            continue
        target = values
        for part in f.path[:-1]:
            target = target.setdefault(part, {})
        target.update(f.updates(value))
    return values


def spec_command(flags: Callable[[], list[SpecFlag]]) -> Callable[[Callable], Callable]:
    """Mark a command as taking the spec flags ``flags()`` (see :func:`with_spec_flags`), added when
    the command is built: not when its module is imported, so listing the commands never reads the
    specs and registries."""

    def mark(fn: Callable) -> Callable:
        fn.spec_flags_from = flags  # type: ignore[attr-defined]
        return fn

    return mark


def with_spec_flags(flags: list[SpecFlag]) -> Callable[[Callable], Callable]:
    """Add ``flags`` to a typer command; the command receives them as ``values``, the nested
    spec values of the flags the user gave (see :func:`flag_values`)."""

    def decorate(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "values"]
        taken = {p.name for p in own}
        clash = [f.param for f in flags if f.param in taken]
        if clash:
            raise TypeError(f"{fn.__name__}: spec flags {clash} clash with the command's own options")
        extra = [
            inspect.Parameter(
                f.param,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    Optional[f.kind],  # noqa: UP045
                    typer.Option(
                        *f.decls,
                        help=f.help,
                        rich_help_panel=f.panel,
                        show_default=f.default or False,
                        metavar=None if f.kind is bool else _metavar(f),
                    ),
                ],
            )
            for f in flags
        ]

        def command(**kwargs: Any) -> Any:
            given = {f.param: kwargs.pop(f.param, None) for f in flags}
            return fn(**kwargs, values=flag_values(flags, given))

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        command.spec_flags = flags  # type: ignore[attr-defined]
        return command

    return decorate


def _metavar(f: SpecFlag) -> str:
    return {int: "INT", float: "FLOAT"}.get(f.kind, "TEXT")


def spec_from(cls: type[FrozenSpec], config: Path | None, values: Mapping[str, Any], reader) -> FrozenSpec:
    """A ``cls`` from a config file (read by ``reader``) with the flag values laid over it."""
    from prunelab.spec import build_spec, merge

    base = reader(config) if config is not None else {}
    return build_spec(cls, **merge(base, values))
