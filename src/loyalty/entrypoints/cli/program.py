"""``loyalty program``: write a program document as a YAML or JSON file, check it, compare it
with what is published, and publish it.

Every problem is reported at its place in the file (``cafe.yaml:14:7 rules[2].effect.points:
...``): the file is read into a tree of positions alongside its data, and each validation
error's path is followed through that tree.
"""

from __future__ import annotations

import bisect
import difflib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import typer
import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy import Connection, Engine

from loyalty.adapters.clock import utc_now
from loyalty.adapters.db.engine import run_transaction
from loyalty.application import access, programs
from loyalty.application.access import Principal, Scope
from loyalty.application.expressions import check_document_expressions
from loyalty.application.program_document import ProgramDocument
from loyalty.domain.errors import DomainError

EngineFor = Callable[[str | None], Engine]
PrincipalFor = Callable[[Engine, str], Principal]

DatabaseUrl = Annotated[
    Optional[str],  # noqa: UP045 - Typer reads the annotation at runtime
    typer.Option(
        "--database-url",
        envvar="LOYALTY_DATABASE_URL",
        help="SQLAlchemy URL; default sqlite:///loyalty.db",
    ),
]
DocumentFile = Annotated[Path, typer.Argument(help="The program document: .yaml, .yml or .json.")]

SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}
EXIT_INVALID = 1
EXIT_UNREADABLE = 2


# --- reading a file with positions ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    """A node of the file, 1-based. A mapping's ``entries`` map each key to the key's place and
    the value's; a sequence's map each index to the item's place, twice."""

    line: int
    column: int
    kind: Literal["mapping", "sequence", "scalar"] = "scalar"
    entries: dict[str | int, tuple[Place, Place]] = field(default_factory=dict)


class UnreadableDocument(Exception):
    """The file cannot be read or is not well-formed YAML or JSON."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column

    def render(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}:{self.column}"
        return f"{where}: {self.message}"


_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


class DocumentLoader(yaml.SafeLoader):
    """``SafeLoader`` without YAML 1.1's base-60 numbers: there, ``until: 11:00`` is the
    integer 660, which a time field reads as 00:11. Here it stays the text ``11:00``."""


DocumentLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
DocumentLoader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
DocumentLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_places(node: yaml.Node) -> Place:
    line, column = node.start_mark.line + 1, node.start_mark.column + 1
    if isinstance(node, yaml.MappingNode):
        entries: dict[str | int, tuple[Place, Place]] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            key_place = _yaml_places(key_node)
            if key in entries:
                # The loader would silently keep the last one; a document should say it once.
                first = entries[key][0]
                raise UnreadableDocument(
                    f"duplicate key {key!r} (first at line {first.line})",
                    key_place.line,
                    key_place.column,
                )
            entries[key] = (key_place, _yaml_places(value_node))
        return Place(line, column, "mapping", entries)
    if isinstance(node, yaml.SequenceNode):
        items = [_yaml_places(item) for item in node.value]
        return Place(line, column, "sequence", {i: (p, p) for i, p in enumerate(items)})
    return Place(line, column)


def _read_yaml(text: str) -> tuple[Any, Place]:
    loader = DocumentLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, Place(1, 1)
        # Built from the very nodes the positions come from, so data and places agree.
        return loader.construct_document(node), _yaml_places(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "not valid YAML"
        if exc.problem and exc.context:
            started = exc.context_mark
            where = f" at line {started.line + 1}, column {started.column + 1}" if started else ""
            message = f"{exc.problem} ({exc.context}{where})"
        if mark is None:
            raise UnreadableDocument(message) from None
        raise UnreadableDocument(message, mark.line + 1, mark.column + 1) from None
    except yaml.YAMLError as exc:
        raise UnreadableDocument(str(exc)) from None
    finally:
        loader.dispose()


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


class _JsonPlaces:
    """Positions of the values and keys of a JSON text that ``json.loads`` has accepted."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.line_starts = [0, *(i + 1 for i, ch in enumerate(text) if ch == "\n")]
        self.decoder = json.JSONDecoder()

    def _at(self, index: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.line_starts, index)
        return line, index - self.line_starts[line - 1] + 1

    def _skip(self, index: int) -> int:
        match = _JSON_SPACE.match(self.text, index)
        return match.end() if match else index

    def value(self, index: int) -> tuple[Place, int]:
        i = self._skip(index)
        line, column = self._at(i)
        opener = self.text[i]
        if opener not in "{[":
            _, end = self.decoder.raw_decode(self.text, i)
            return Place(line, column), end
        closer = "}" if opener == "{" else "]"
        entries: dict[str | int, tuple[Place, Place]] = {}
        i = self._skip(i + 1)
        while self.text[i] != closer:
            if opener == "{":
                key_place = Place(*self._at(i))
                key, i = self.decoder.raw_decode(self.text, i)
                i = self._skip(i) + 1  # the colon
                child, i = self.value(i)
                if key in entries:
                    first = entries[key][0]
                    raise UnreadableDocument(
                        f"duplicate key {key!r} (first at line {first.line})",
                        key_place.line,
                        key_place.column,
                    )
                entries[key] = (key_place, child)
            else:
                child, i = self.value(i)
                entries[len(entries)] = (child, child)
            i = self._skip(i)
            if self.text[i] == ",":
                i = self._skip(i + 1)
        kind: Literal["mapping", "sequence"] = "mapping" if opener == "{" else "sequence"
        return Place(line, column, kind, entries), i + 1


def _read_json(text: str) -> tuple[Any, Place]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnreadableDocument(exc.msg, exc.lineno, exc.colno) from None
    except RecursionError:
        raise UnreadableDocument("nested too deeply") from None
    place, _ = _JsonPlaces(text).value(0)
    return data, place


def read_document(path: Path) -> tuple[Any, Place]:
    """The file's data and the place of every node in it. Raises ``UnreadableDocument``."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UnreadableDocument(f"expected a .yaml, .yml or .json file, not {path.suffix!r}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise UnreadableDocument(exc.strerror or str(exc)) from None
    except UnicodeDecodeError as exc:
        raise UnreadableDocument(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return _read_yaml(text) if kind == "yaml" else _read_json(text)


# --- validation errors, placed -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    column: int
    path: str
    message: str

    def render(self, source: str) -> str:
        return f"{source}:{self.line}:{self.column} {self.path}: {self.message}"


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def format_path(loc: Sequence[str | int]) -> str:
    """``rules[2].effect.points``; a key that is not a plain word is quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "(document)"


def _follow(root: Place, loc: Sequence[str | int]) -> tuple[Place, list[str | int]]:
    """The deepest place the path reaches (an entry's key, where the reader looks for it), and
    the part of the path that exists in the file."""
    place, followed = root, []
    value = root
    for part in loc:
        entry = value.entries.get(part if value.kind == "sequence" else str(part))
        if entry is None or (value.kind == "sequence") != isinstance(part, int):
            break
        place, value = entry
        followed.append(part)
    return place, followed


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The section of the document model at ``loc``, if it is one."""
    annotation: Any = ProgramDocument
    for part in loc:
        annotation = _unwrap(annotation)
        origin = get_origin(annotation)
        if origin is list:
            annotation = get_args(annotation)[0]
        elif origin is dict:
            annotation = get_args(annotation)[1]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found = [
                f.annotation
                for name, f in annotation.model_fields.items()
                if (f.alias or name) == part
            ]
            if not found:
                return None
            annotation = found[0]
        else:
            return None
    annotation = _unwrap(annotation)
    is_model = get_origin(annotation) is None and isinstance(annotation, type)
    return annotation if is_model and issubclass(annotation, BaseModel) else None


def _unknown_field(loc: Sequence[str | int]) -> str:
    name = str(loc[-1])
    model = _model_at(loc[:-1])
    if model is None:
        return f"unknown field {name!r}"
    allowed = [f.alias or n for n, f in model.model_fields.items()]
    close = difflib.get_close_matches(name, allowed, n=1)
    if close:
        return f"unknown field {name!r} (did you mean {close[0]!r}?)"
    return f"unknown field {name!r} (expected one of: {', '.join(allowed)})"


def _problem(error: ErrorDetails, root: Place) -> Problem:
    loc = list(error["loc"])
    place, followed = _follow(root, loc)
    if error["type"] == "extra_forbidden":
        return Problem(place.line, place.column, format_path(loc), _unknown_field(loc))
    message = error["msg"]
    if error["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    # A missing field is named in the path although the file lacks it; any other path part
    # the file lacks is a union member's name (``str``, ``int``), which means nothing there.
    shown = loc if error["type"] == "missing" else followed
    return Problem(place.line, place.column, format_path(shown), message)


def check_document(data: Any, root: Place) -> tuple[ProgramDocument | None, list[Problem]]:
    try:
        return ProgramDocument.model_validate(data), []
    except ValidationError as exc:
        problems = [_problem(error, root) for error in exc.errors()]
        return None, sorted(problems, key=lambda p: (p.line, p.column))


def _load(path: Path, *, exit_invalid: int) -> tuple[ProgramDocument, Place]:
    """The file's document and places, or exit: 2 if it cannot be read, ``exit_invalid`` if
    invalid."""
    try:
        data, root = read_document(path)
    except UnreadableDocument as exc:
        typer.echo(exc.render(str(path)), err=True)
        raise typer.Exit(EXIT_UNREADABLE) from None
    document, problems = check_document(data, root)
    if document is None:
        for problem in problems:
            typer.echo(problem.render(str(path)), err=True)
        raise typer.Exit(exit_invalid)
    return document, root


def normalized_yaml(document: ProgramDocument) -> str:
    """The document as the engine stores it, every default filled in, keys sorted: two
    documents that mean the same read the same."""
    data = document.model_dump(mode="json", by_alias=True)
    return yaml.safe_dump(data, sort_keys=True, allow_unicode=True, default_flow_style=False)


def _paths_by_line(text: str) -> tuple[list[int], list[str]]:
    """For each line of a YAML text that starts an entry or item, the path of that entry (the
    deepest one, when an item and its first key share the line), in line order."""
    node = yaml.compose(text, Loader=DocumentLoader)
    found: dict[int, list[str | int]] = {}

    def visit(place: Place, path: list[str | int]) -> None:
        for part, (start, value) in place.entries.items():
            here = [*path, part]
            if len(here) > len(found.get(start.line, [])):
                found[start.line] = here
            visit(value, here)

    if node is not None:
        visit(_yaml_places(node), [])
    lines = sorted(found)
    return lines, [format_path(found[line]) for line in lines]


_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def document_diff(published: str, proposed: str, *, fromfile: str, tofile: str) -> list[str]:
    """A unified diff whose hunk headers name where each hunk's first change is, e.g.
    ``@@ -119,7 +119,7 @@ rules[3].conditions.min_total_minor``: with sorted keys, a rule's
    ``id`` is often too far from a change to show in its context lines."""
    paths = {"-": _paths_by_line(published), "+": _paths_by_line(proposed)}
    diff = list(
        difflib.unified_diff(
            published.splitlines(),
            proposed.splitlines(),
            fromfile=fromfile,
            tofile=tofile,
            lineterm="",
        )
    )
    out = diff[:2]
    header: int | None = None
    at = {"-": 0, "+": 0}
    for line in diff[2:]:
        hunk = _HUNK.match(line)
        if hunk is not None:
            header = len(out)
            at = {"-": int(hunk.group(1)), "+": int(hunk.group(2))}
            out.append(line)
            continue
        side = line[:1]
        if side in ("-", "+") and header is not None:
            lines, names = paths[side]
            index = bisect.bisect_right(lines, at[side]) - 1
            if index >= 0:
                out[header] = f"{out[header]} {names[index]}"
            header = None
        for counted in ("-", "+"):
            if side in (counted, " "):
                at[counted] += 1
        out.append(line)
    return out


_PATH_PART = re.compile(r'\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]|([^.\[\]]+)')


def parse_path(path: str) -> list[str | int]:
    """The parts of a path as ``format_path`` writes it, or dotted (``rules.2.effect``)."""
    parts: list[str | int] = []
    for match in _PATH_PART.finditer(path):
        index, quoted, word = match.groups()
        if index is not None:
            parts.append(int(index))
        elif quoted is not None:
            parts.append(str(json.loads(quoted)))
        else:
            parts.append(int(word) if word.isdigit() else word)
    return parts


def _fail(exc: DomainError, *, source: Path | None = None, root: Place | None = None) -> typer.Exit:
    """Print a refusal as ``code: detail``; the document errors it lists (an expression that
    does not compile, a currency that cannot change) are placed in the file like any other."""
    typer.echo(f"{exc.code}: {exc.detail}", err=True)
    errors = exc.context.get("errors")
    if source is not None and root is not None and isinstance(errors, list):
        for error in errors:
            path = error.get("field") or error.get("path") if isinstance(error, dict) else None
            if not isinstance(path, str):
                continue
            place, _ = _follow(root, parse_path(path))
            problem = Problem(place.line, place.column, path, str(error.get("message", "")))
            typer.echo(problem.render(str(source)), err=True)
    return typer.Exit(EXIT_INVALID)


# --- the commands -----------------------------------------------------------------------------


def program_commands(engine_for: EngineFor, principal_for: PrincipalFor) -> typer.Typer:
    """The ``program`` commands. ``engine_for`` opens the database for one command (the caller
    disposes it when the command ends); ``principal_for`` is the operator's authority over a
    program."""
    program_app = typer.Typer(
        help="Write, check, compare and publish program documents.", no_args_is_help=True
    )

    @program_app.command("schema")
    def schema() -> None:
        """Print the JSON Schema of the program document (for editors and CI)."""
        typer.echo(json.dumps(ProgramDocument.model_json_schema(by_alias=True), indent=2))

    @program_app.command("validate")
    def validate(file: DocumentFile) -> None:
        """Check a document: every problem with its path, line and column. Exit 0 if valid,
        1 if not, 2 if the file can't be read or parsed."""
        try:
            data, root = read_document(file)
        except UnreadableDocument as exc:
            typer.echo(exc.render(str(file)), err=True)
            raise typer.Exit(EXIT_UNREADABLE) from None
        document, problems = check_document(data, root)
        if document is not None:
            # Expressions are checked as the engine will check them when the file is applied:
            # compiled against the schema and dry-run in a child process.
            try:
                check_document_expressions(document)
            except DomainError as exc:
                for error in exc.context.get("errors", []):
                    place, _ = _follow(root, parse_path(str(error["field"])))
                    message = str(error["message"])
                    if error.get("suggestion") and error["suggestion"] not in message:
                        message += f" (did you mean {error['suggestion']!r}?)"
                    typer.echo(
                        Problem(place.line, place.column, str(error["field"]), message).render(
                            str(file)
                        )
                    )
                raise typer.Exit(EXIT_INVALID) from None
            typer.echo("valid")
            return
        for problem in problems:
            typer.echo(problem.render(str(file)))
        raise typer.Exit(EXIT_INVALID)

    @program_app.command("diff")
    def diff(
        file: DocumentFile,
        program: Annotated[str, typer.Option(help="Program id.")],
        database_url: DatabaseUrl = None,
    ) -> None:
        """What publishing FILE would change in the program's current version, as a unified
        diff of both documents with every default filled in. Exit 0 if identical, 1 if they
        differ, 2 if FILE is unreadable or invalid."""
        document, _ = _load(file, exit_invalid=EXIT_UNREADABLE)
        engine = engine_for(database_url)
        principal = principal_for(engine, program)
        try:
            current = programs.get_program(engine, principal, program)
        except DomainError as exc:
            raise _fail(exc) from None
        published = normalized_yaml(ProgramDocument.model_validate(current["document"]))
        lines = document_diff(
            published,
            normalized_yaml(document),
            fromfile=f"{program} (version {current['version']})",
            tofile=str(file),
        )
        if not lines:
            typer.echo("no changes")
            return
        typer.echo("\n".join(lines))
        raise typer.Exit(1)

    @program_app.command("apply")
    def apply(
        file: DocumentFile,
        program: Annotated[
            Optional[str],  # noqa: UP045 - Typer reads the annotation at runtime
            typer.Option(help="Publish a new version of this program."),
        ] = None,
        tenant: Annotated[
            Optional[str],  # noqa: UP045
            typer.Option(help="Without --program: create the program for this tenant."),
        ] = None,
        expect_version: Annotated[
            Optional[int],  # noqa: UP045
            typer.Option(min=1, help="Refuse if the program is no longer at this version."),
        ] = None,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Validate FILE, then publish it: a new version of --program, or a new program for
        --tenant (created if new). Publishing the current document again changes nothing."""
        if program is None and tenant is None:
            typer.echo("give --program to publish a new version, or --tenant to create", err=True)
            raise typer.Exit(EXIT_UNREADABLE)
        if program is not None and tenant is not None:
            typer.echo("--tenant is only for creating a program; the program has one", err=True)
            raise typer.Exit(EXIT_UNREADABLE)
        if program is None and expect_version is not None:
            typer.echo("--expect-version needs --program", err=True)
            raise typer.Exit(EXIT_UNREADABLE)
        document, root = _load(file, exit_invalid=EXIT_INVALID)
        engine = engine_for(database_url)
        now = utc_now()
        if program is None:
            assert tenant is not None
            try:
                created = _create(engine, tenant, document, now=now)
            except DomainError as exc:
                raise _fail(exc, source=file, root=root) from None
            typer.echo(f"created program {created} (version 1)")
            return
        principal = principal_for(engine, program)
        try:
            before = programs.get_program(engine, principal, program)["version"]
            view = programs.update_program(
                engine, principal, program, document, expected_version=expect_version, now=now
            )
        except DomainError as exc:
            raise _fail(exc, source=file, root=root) from None
        if view["version"] == before:
            typer.echo(f"no changes (version {view['version']})")
        else:
            typer.echo(f"published version {view['version']}")

    return program_app


def _create(engine: Engine, tenant: str, document: ProgramDocument, *, now: datetime) -> str:
    def ensure(conn: Connection) -> str:
        return access.ensure_tenant(conn, tenant, now=now)

    # The operator's authority, as for every CLI command: admin for the tenant, actor ``cli``.
    principal = Principal(
        run_transaction(engine, ensure), "cli", access.expand_scopes([Scope.ADMIN]), None
    )
    return str(programs.create_program(engine, principal, document, now=now).body["id"])
