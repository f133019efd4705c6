"""Compatibility of two versions of a message model, for CI.

``check_compatibility(old, new)`` compares the JSON Schemas pydantic gives for the two
models, the way a consumer reads: the *writer's* serialization schema against the
*reader's* validation schema, with the reader's tolerant defaults (unknown fields ignored
unless the reader forbids them, missing fields taking their defaults).

- backward: consumers on ``new`` read messages written with ``old`` (upgrade consumers
  first; older messages still in queues and dead-letter queues must decode);
- forward: consumers on ``old`` read messages written with ``new`` (upgrade producers
  first);
- full: both.

A change is breaking for a direction when some message the writer may write is refused by
the reader: a field the reader requires that the writer does not write, a type the reader
does not accept (``int`` -> ``str``; ``float`` -> ``int``; ``int`` -> ``float`` is fine), a
``null`` or an enum value the reader refuses, a constraint the reader adds, an extra field a
reader with ``extra="forbid"`` refuses. Each is listed in words with its field path. The
check is static and conservative: it does not know upcasters (a breaking backward change is
what an upcaster is for: see docs/evolution.md), nor custom validators.

The ``messagebus schema`` command (``check`` and ``dump``) is built here too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

__all__ = ["Mode", "Report", "add_parser", "check_compatibility", "run"]

Mode = Literal["backward", "forward", "full"]
MODES: tuple[Mode, ...] = ("backward", "forward", "full")
Schema = Mapping[str, Any]
SchemaSource = type[BaseModel] | Mapping[str, Any]

_CONSTRAINTS_MIN = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_CONSTRAINTS_MAX = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")


@dataclass(frozen=True)
class Report:
    """What :func:`check_compatibility` found: the breaking changes per direction, in words
    (empty: compatible in that direction)."""

    old: str
    new: str
    backward: list[str] = field(default_factory=list)
    forward: list[str] = field(default_factory=list)

    @property
    def backward_compatible(self) -> bool:
        """Consumers on NEW read every message written with OLD."""
        return not self.backward

    @property
    def forward_compatible(self) -> bool:
        """Consumers on OLD read every message written with NEW."""
        return not self.forward

    def problems(self, mode: Mode = "full") -> list[str]:
        """The breaking changes for ``mode``, each prefixed with its direction. Raises
        :class:`ValueError` for a mode other than backward, forward or full."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        out: list[str] = []
        if mode in ("backward", "full"):
            out += [f"backward: {p}" for p in self.backward]
        if mode in ("forward", "full"):
            out += [f"forward: {p}" for p in self.forward]
        return out

    def compatible(self, mode: Mode = "full") -> bool:
        """True when there is no breaking change for ``mode``."""
        return not self.problems(mode)

    def explain(self, mode: Mode = "full") -> str:
        """A human summary for ``mode``: one line, or a line per breaking change."""
        problems = self.problems(mode)
        if not problems:
            return f"{self.old} -> {self.new}: {mode} compatible"
        count = f"{len(problems)} breaking change{'s' if len(problems) > 1 else ''}"
        lines = [f"{self.old} -> {self.new}: not {mode} compatible ({count})"]
        return "\n".join([*lines, *(f"  - {p}" for p in problems)])


def _schemas(source: SchemaSource) -> tuple[str, Schema, Schema]:
    """``(name, writer schema, reader schema)`` of a model or a JSON Schema mapping."""
    if isinstance(source, type) and issubclass(source, BaseModel):
        by_alias = bool(source.model_config.get("serialize_by_alias", False))
        writer = source.model_json_schema(mode="serialization", by_alias=by_alias)
        return source.__qualname__, writer, source.model_json_schema(mode="validation")
    if isinstance(source, Mapping):
        return str(source.get("title", "schema")), source, source
    raise TypeError(f"expected a pydantic model class or a JSON Schema mapping, got {source!r}")


def check_compatibility(old: SchemaSource, new: SchemaSource) -> Report:
    """Compare two versions of a message model (pydantic model classes, or JSON Schemas such
    as a saved ``model_json_schema()``). Pure; raises :class:`TypeError` for anything else.
    See the module docstring for the rules."""
    old_name, old_writer, old_reader = _schemas(old)
    new_name, new_writer, new_reader = _schemas(new)
    if old_name == new_name:
        old_name, new_name = f"OLD {old_name}", f"NEW {new_name}"
    return Report(
        old_name,
        new_name,
        backward=_Compare(reader=new_reader, writer=old_writer).problems(),
        forward=_Compare(reader=old_reader, writer=new_writer).problems(),
    )


def _type_names(schema: Schema) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(map(str, kind))
    return str(kind) if kind else "any value"


class _Compare:
    """Can a reader with schema ``reader`` validate everything the writer's schema allows?"""

    def __init__(self, *, reader: Schema, writer: Schema) -> None:
        self.reader_root = reader
        self.writer_root = writer
        self.out: list[str] = []
        self.seen: set[tuple[str, str]] = set()

    def problems(self) -> list[str]:
        self.value(self.reader_root, self.writer_root, "")
        return self.out

    def add(self, path: str, text: str) -> None:
        self.out.append(f"{path or '(message)'}: {text}")

    @staticmethod
    def resolve(root: Schema, schema: Schema) -> Schema:
        for _ in range(64):  # a $ref chain longer than this is a cycle of refs alone
            ref = schema.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#/"):
                return schema
            target: Any = root
            for part in ref[2:].split("/"):
                target = (
                    target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, Mapping) else {}
                )
            # Siblings of $ref (a default, a description) do not change what validates.
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema

    @staticmethod
    def alternatives(schema: Schema) -> list[Schema]:
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return [a for alt in schema[key] for a in _Compare.alternatives(alt)]
        kind = schema.get("type")
        if isinstance(kind, list):
            return [{**schema, "type": k} for k in kind]
        return [schema]

    def value(self, reader: Schema, writer: Schema, path: str) -> None:
        pair = (str(reader.get("$ref", "")), str(writer.get("$ref", "")))
        if pair in self.seen:
            return  # a recursive model: this pair is being compared further up
        if pair[0] and pair[1]:
            self.seen.add(pair)  # the refs being compared, from the root down to here
        try:
            reader = self.resolve(self.reader_root, reader)
            writer = self.resolve(self.writer_root, writer)
            readers = [self.resolve(self.reader_root, r) for r in self.alternatives(reader)]
            for written in (self.resolve(self.writer_root, w) for w in self.alternatives(writer)):
                self.one(readers, written, path)
        finally:
            self.seen.discard(pair)

    def one(self, readers: list[Schema], written: Schema, path: str) -> None:
        """``written`` (one alternative of the writer) must be read by some reader alternative."""
        if any(not self.kinds(r) for r in readers):
            return  # a reader that accepts any value
        candidates = [r for r in readers if self.accepts_kind(r, written)]
        if not candidates:
            what = " or ".join(_type_names(r) for r in readers)
            self.add(path, f"the writer may write {_type_names(written)}, the reader accepts only {what}")
            return
        # Of several readers that take this kind, the first without problems wins.
        best: list[str] | None = None
        for reader in candidates:
            sub = _Compare(reader=self.reader_root, writer=self.writer_root)
            sub.seen = self.seen
            sub.detail(reader, written, path)
            if not sub.out:
                return
            if best is None:
                best = sub.out
        self.out.extend(best or [])

    @staticmethod
    def kinds(schema: Schema) -> set[str]:
        kind = schema.get("type")
        if isinstance(kind, str):
            return {kind}
        if "const" in schema or "enum" in schema:
            values = [schema["const"]] if "const" in schema else list(schema["enum"])
            return {_json_kind(v) for v in values}
        if "properties" in schema:
            return {"object"}
        return set()

    def accepts_kind(self, reader: Schema, written: Schema) -> bool:
        readable = self.kinds(reader)
        written_kinds = self.kinds(written)
        if not written_kinds:
            return False  # the writer may write anything; the reader is typed
        if "number" in readable:
            readable = readable | {"integer"}  # an int is a valid float
        return written_kinds <= readable

    def detail(self, reader: Schema, written: Schema, path: str) -> None:
        self.enum(reader, written, path)
        self.constraints(reader, written, path)
        reader_format, written_format = reader.get("format"), written.get("format")
        if reader_format and reader_format != written_format and reader.get("type") == "string":
            self.add(
                path, f"the reader requires format {reader_format}, the writer writes {written_format or 'any string'}"
            )
        kinds = self.kinds(written)
        if "array" in kinds:
            self.value(reader.get("items", {}), written.get("items", {}), f"{path}[]")
        if "object" in kinds:
            self.object(reader, written, path)

    def enum(self, reader: Schema, written: Schema, path: str) -> None:
        allowed = [reader["const"]] if "const" in reader else reader.get("enum")
        if allowed is None:
            return
        values = [written["const"]] if "const" in written else written.get("enum")
        if values is None:
            self.add(
                path,
                f"the reader accepts only {', '.join(json.dumps(v) for v in allowed)}, "
                f"the writer may write any {_type_names(written)}",
            )
            return
        refused = [v for v in values if v not in allowed]
        if refused:
            self.add(
                path,
                f"the writer may write {', '.join(json.dumps(v) for v in refused)}, "
                "which the reader's values do not include",
            )

    def constraints(self, reader: Schema, written: Schema, path: str) -> None:
        for key in _CONSTRAINTS_MIN + _CONSTRAINTS_MAX:
            if key not in reader:
                continue
            limit, given = reader[key], written.get(key)
            tighter = given is None or (given < limit if key in _CONSTRAINTS_MIN else given > limit)
            if tighter:
                self.add(
                    path,
                    f"the reader requires {key} {limit}, "
                    f"the writer {'has none' if given is None else f'allows {key} {given}'}",
                )
        for key in ("pattern", "multipleOf"):
            if key in reader and reader[key] != written.get(key):
                self.add(path, f"the reader requires {key} {reader[key]!r}, the writer {written.get(key, 'none')!r}")

    def object(self, reader: Schema, written: Schema, path: str) -> None:
        reader_props: Mapping[str, Schema] = reader.get("properties", {})
        written_props: Mapping[str, Schema] = written.get("properties", {})
        required = set(reader.get("required", ()))
        # A writer's field without a default is always written; one with a default too (pydantic
        # writes every field), so "written" is simply "a property of the writer".
        for name, schema in reader_props.items():
            where = f"{path}.{name}" if path else name
            if name in written_props:
                self.value(schema, written_props[name], where)
            elif name in required:
                self.add(where, "required by the reader (no default), not written by the writer")
        extra_schema = reader.get("additionalProperties", True)
        for name, schema in written_props.items():
            if name in reader_props:
                continue
            where = f"{path}.{name}" if path else name
            if extra_schema is False:
                self.add(where, "written by the writer, refused by the reader (extra fields forbidden)")
            elif isinstance(extra_schema, Mapping):
                self.value(extra_schema, schema, where)
        written_extra = written.get("additionalProperties")
        if isinstance(written_extra, Mapping):
            target = extra_schema if isinstance(extra_schema, Mapping) else {}
            if extra_schema is False:
                self.add(f"{path}.*" if path else "*", "the writer may write any keys, the reader forbids extra fields")
            else:
                self.value(target, written_extra, f"{path}.*" if path else "*")


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


# -- the command -------------------------------------------------------------------------------


class SchemaUsageError(Exception):
    """A MODULE:NAME that cannot be loaded or is not a model, or a JSON file that is not a schema."""


def _load(spec: str) -> SchemaSource:
    if spec.endswith(".json"):
        try:
            data = json.loads(Path(spec).read_text())
        except (OSError, ValueError) as exc:
            raise SchemaUsageError(f"cannot read the JSON Schema {spec!r}: {exc}") from exc
        if not isinstance(data, dict):
            raise SchemaUsageError(f"{spec!r} holds a JSON {type(data).__name__}, not a JSON Schema object")
        return data
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SchemaUsageError(
            f"expected MODULE:MODEL (e.g. shop.events:OrderCreated) or a .json schema file, got {spec!r}"
        )
    if "" not in sys.path:
        sys.path.insert(0, "")  # like python -m: modules of the current directory are found
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SchemaUsageError(f"cannot import {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SchemaUsageError(f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        raise SchemaUsageError(f"{spec} is {obj!r}, not a pydantic model class")
    return obj


def add_parser(commands: Any) -> None:
    """Add ``schema check`` and ``schema dump`` to the ``messagebus`` command's subparsers."""
    schema = commands.add_parser(
        "schema",
        help="check that a message model change is compatible (for CI)",
        description="Compare two versions of a message model the way consumers read them.",
    )
    actions = schema.add_subparsers(dest="schema_command", required=True)
    check = actions.add_parser(
        "check",
        help="is NEW backward/forward compatible with OLD? exit 0 yes, 1 no (printing why), 2 usage error",
        description="Compare OLD and NEW (each MODULE:MODEL, or a .json file saved by 'schema dump'). "
        "backward: consumers on NEW read messages written with OLD; forward: consumers on OLD read messages "
        "written with NEW; full: both. Exit 0 when compatible, 1 when not (each breaking change printed), "
        "2 on a usage error.",
    )
    check.add_argument("old", help="the old model: MODULE:MODEL or a JSON Schema file (.json)")
    check.add_argument("new", help="the new model: MODULE:MODEL or a JSON Schema file (.json)")
    check.add_argument("--mode", choices=MODES, default="backward", help="default: backward")
    dump = actions.add_parser(
        "dump",
        help="print a model's JSON Schema (save it to check later changes against)",
        description="Print the JSON Schema of MODULE:MODEL, to commit as the snapshot 'schema check' compares with.",
    )
    dump.add_argument("model", help="MODULE:MODEL")


def run(args: argparse.Namespace) -> int:
    """Run ``messagebus schema ...``; the exit status (0, 1 or 2)."""
    try:
        if args.schema_command == "dump":
            model = _load(args.model)
            if not isinstance(model, type):
                raise SchemaUsageError("dump takes MODULE:MODEL, not a .json file")
            print(json.dumps(model.model_json_schema(), indent=2, sort_keys=True))
            return 0
        report = check_compatibility(_load(args.old), _load(args.new))
    except SchemaUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.explain(args.mode))
    return 0 if report.compatible(args.mode) else 1
