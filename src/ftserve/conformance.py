"""Property-weighted conformance score of our OpenAPI document against OpenAI's official spec.

A Python re-implementation of the recipe OGX runs on top of oasdiff (operations matched by path
template and method, problems counted per property, score = 1 - problems / properties counted in
OpenAI's spec). oasdiff is a Go binary this project cannot install, so the numbers are close to,
not byte-identical with, what oasdiff would report.

Both documents are plain dicts (OpenAPI 3.0 or 3.1 as loaded from YAML/JSON); nothing here imports
FastAPI, so the contract tests can score `app.openapi()` and a static file alike.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Kind = Literal["missing", "type", "enum", "nullable", "union", "default"]

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
_NO_DEFAULT: Any = object()


@dataclass(frozen=True)
class Problem:
    """One property (or parameter) of an OpenAI operation that our document does not match."""

    path: str  # OpenAI's path template, e.g. "/fine_tuning/jobs/{fine_tuning_job_id}"
    method: str  # lower case, as in the spec
    where: str  # e.g. "query limit", "request .method.type", "response 200 .data[].status"
    kind: Kind
    detail: str


@dataclass(frozen=True)
class Deviation:
    """A documented, deliberate deviation (docs/conformance.md); the problem it names is not counted."""

    path: str
    method: str
    where: str
    kind: str
    reason: str

    def matches(self, problem: Problem) -> bool:
        """Whether this deviation accounts for `problem`."""
        mine = (self.path, self.method.lower(), self.where, self.kind)
        return mine == (problem.path, problem.method, problem.where, problem.kind)


def _score(problems: int, properties: int) -> float:
    denominator = max(properties, problems)
    return 100.0 if denominator == 0 else round((1 - problems / denominator) * 100, 1)


@dataclass(frozen=True)
class CategoryScore:
    """Score of one OpenAI tag (category), e.g. "Fine-tuning"."""

    category: str
    endpoints_total: int
    endpoints_implemented: int
    properties: int
    problems: tuple[Problem, ...]

    @property
    def score(self) -> float:
        """Percentage of OpenAI properties, in implemented operations, that we match."""
        return _score(len(self.problems), self.properties)


@dataclass(frozen=True)
class ConformanceReport:
    """Scores per category, in the order the categories were asked for."""

    categories: tuple[CategoryScore, ...]
    unused_deviations: tuple[Deviation, ...] = ()  # documented but matched no problem: stale docs

    @property
    def score(self) -> float:
        """Overall percentage, summing problems and properties across categories."""
        problems = sum(len(c.problems) for c in self.categories)
        return _score(problems, sum(c.properties for c in self.categories))

    def table(self) -> str:
        """A plain-text table: one line per category plus an overall line."""
        header = f"{'category':<16} {'endpoints':>9} {'properties':>10} {'problems':>8} {'score':>6}"
        lines = [header, "-" * len(header)]
        rows = [
            (c.category, c.endpoints_implemented, c.endpoints_total, c.properties, len(c.problems), c.score)
            for c in self.categories
        ]
        rows.append((
            "overall", sum(r[1] for r in rows), sum(r[2] for r in rows), sum(r[3] for r in rows),
            sum(r[4] for r in rows), self.score,
        ))
        for name, implemented, total, properties, problems, score in rows:
            if name == "overall":
                lines.append("-" * len(header))
            endpoints = f"{implemented}/{total}"
            lines.append(f"{name:<16} {endpoints:>9} {properties:>10} {problems:>8} {score:>6.1f}")
        return "\n".join(lines)


@dataclass
class _Node:
    """A schema with `$ref`, `allOf`, `const` and the three nullability spellings folded away."""

    types: frozenset[str] = frozenset()  # empty: unconstrained
    nullable: bool = False
    enum: frozenset[str] | None = None  # JSON-encoded values, null excluded
    default: Any = _NO_DEFAULT
    variants: tuple[_Node, ...] = ()  # non-null alternatives; empty unless there are two or more
    properties: dict[str, Any] = field(default_factory=dict)
    items: Any = None
    additional: Any = None
    refs: frozenset[str] = frozenset()
    name: str | None = None  # component name at the use site, used to pair union variants

    @property
    def null_only(self) -> bool:
        return (self.nullable and not self.types and self.enum is None and not self.variants
                and not self.properties and self.items is None and self.additional is None)


def _resolve(doc: Mapping[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, Mapping) else {}
    return node


def _deref(doc: Mapping[str, Any], obj: Any) -> Any:
    """Resolve a `$ref` to a parameter, request body or response (not a schema)."""
    seen: set[str] = set()
    while isinstance(obj, Mapping) and "$ref" in obj and obj["$ref"] not in seen:
        seen.add(obj["$ref"])
        obj = _resolve(doc, obj["$ref"])
    return obj


def _own(schema: Mapping[str, Any]) -> _Node:
    declared = schema.get("type")
    types = {declared} if isinstance(declared, str) else set(declared or ())
    nullable = "null" in types or schema.get("nullable") is True
    types.discard("null")
    values = schema.get("enum", [schema["const"]] if "const" in schema else None)
    enum = None
    if values is not None:
        nullable = nullable or None in values
        concrete = [v for v in values if v is not None]
        enum = frozenset(json.dumps(v, sort_keys=True) for v in concrete) if concrete else None
        types = types or {_JSON_TYPES.get(type(v), "string") for v in concrete}
    properties = schema.get("properties")
    items, additional = schema.get("items"), schema.get("additionalProperties")
    additional = additional if isinstance(additional, Mapping) else None
    if not types and (properties or additional is not None):
        types = {"object"}
    elif not types and items is not None:
        types = {"array"}
    # `default: null` is read as no default: FastAPI strips it from the document, and on the wire an
    # absent nullable field and a null one are the same request.
    default = schema.get("default", _NO_DEFAULT)
    default = _NO_DEFAULT if default is None else default
    return _Node(frozenset(types), nullable, enum, default, properties=dict(properties or {}), items=items,
                 additional=additional)


def _merge(a: _Node, b: _Node) -> _Node:
    """Combine two views of one value (allOf members, or a schema's own keys and its union)."""
    return _Node(
        types=a.types & b.types if a.types and b.types else a.types | b.types,
        nullable=a.nullable or b.nullable,
        enum=a.enum if a.enum is not None else b.enum,
        default=a.default if a.default is not _NO_DEFAULT else b.default,
        variants=a.variants or b.variants,
        properties={**b.properties, **a.properties},
        items=a.items if a.items is not None else b.items,
        additional=a.additional if a.additional is not None else b.additional,
        refs=a.refs | b.refs,
        name=a.name or b.name,
    )


def _union(members: Sequence[_Node]) -> _Node:
    nullable = any(m.nullable for m in members)
    alternatives = [m for m in members if not m.null_only]
    if not alternatives:
        return _Node(nullable=True)
    if len(alternatives) == 1:
        return replace(alternatives[0], nullable=nullable)
    # Nested unions are spliced: `anyOf: [{oneOf: [A, B]}, C]` (OpenAI's style) accepts the same
    # values as `anyOf: [A, B, C]`, the only form pydantic emits.
    variants = tuple(replace(v, nullable=False) for m in alternatives for v in (m.variants or (m,)))
    return _Node(nullable=nullable, variants=variants)


def _flatten(schema: Any, doc: Mapping[str, Any], seen: frozenset[str] = frozenset()) -> _Node:
    """Normalise `schema`, resolving `$ref`s against its own document `doc`."""
    if not isinstance(schema, Mapping):
        return _Node()  # absent, or a 3.1 boolean schema: no structure to compare
    refs: list[str] = []
    while "$ref" in schema:
        ref = schema["$ref"]
        if ref in seen:  # a union or allOf that contains itself
            return _Node(refs=frozenset(refs))
        seen, refs = seen | {ref}, [*refs, ref]
        schema = {**_resolve(doc, ref), **{k: v for k, v in schema.items() if k != "$ref"}}
    node = _own(schema)
    for part in schema.get("allOf", ()):
        node = _merge(node, _flatten(part, doc, seen))
    # oneOf and anyOf are treated alike: pydantic can only emit anyOf, and whether alternatives
    # may overlap is not observable on the wire.
    members = [*schema.get("anyOf", ()), *schema.get("oneOf", ())]
    if members:
        node = _merge(node, _union([_flatten(m, doc, seen) for m in members]))
    name = refs[0].rsplit("/", 1)[-1] if refs else None
    return replace(node, refs=node.refs | frozenset(refs), name=name or node.name)


def _pair(official: Sequence[_Node], ours: Sequence[_Node]) -> list[tuple[_Node, _Node | None]]:
    """Pair union alternatives: by component name, then by shape, then by type, then by position."""
    keys = (
        lambda n: n.name,
        lambda n: (n.types, n.enum, frozenset(n.properties)),
        lambda n: n.types,
        lambda n: 0,
    )
    free, pairs = list(ours), dict[int, _Node]()
    for key in keys:
        for i, o in enumerate(official):
            wanted = key(o)
            if i in pairs or wanted is None:
                continue
            if (match := next((u for u in free if key(u) == wanted), None)) is not None:
                pairs[i] = match
                free.remove(match)
    return [(o, pairs.get(i)) for i, o in enumerate(official)]


def _listing(values: Iterable[str], empty: str = "nothing") -> str:
    return "|".join(sorted(values)) or empty


def _diff(o: _Node, u: _Node) -> tuple[Kind, str] | None:
    """The most important difference between an OpenAI property and ours, or None."""
    o_count, u_count = len(o.variants) or 1, len(u.variants) or 1
    if o_count == u_count == 1:
        if o.types and o.types != u.types:
            return "type", f"OpenAI {_listing(o.types)}, ours {_listing(u.types, 'unconstrained')}"
        if o.enum is not None and o.enum != u.enum:
            ours = u.enum or frozenset()
            return "enum", f"ours lacks {_listing(o.enum - ours)}; adds {_listing(ours - o.enum)}"
    if o.nullable != u.nullable:
        return "nullable", f"OpenAI nullable={o.nullable}, ours nullable={u.nullable}"
    if o_count != u_count:
        return "union", f"OpenAI has {o_count} non-null variants, ours {u_count}"
    for ov, uv in _pair(o.variants, u.variants):
        if uv is not None and (found := _diff(ov, uv)):
            return found[0], f"variant {ov.name or _listing(ov.types)}: {found[1]}"
    if o.default is not _NO_DEFAULT and o.default != u.default:
        theirs = "none" if u.default is _NO_DEFAULT else repr(u.default)
        return "default", f"OpenAI {o.default!r}, ours {theirs}"
    return None


class _Walk:
    """Counts OpenAI properties of one operation and compares each with ours, in one pass.

    A single walk keeps the denominator and the problems consistent: a property is compared
    exactly when it is counted. Each component schema is entered at most once per body, which
    keeps recursive schemas finite (the same rule OGX's counter applies).
    """

    def __init__(self, official: Mapping[str, Any], ours: Mapping[str, Any], path: str, method: str):
        self.official, self.ours, self.path, self.method = official, ours, path, method
        self.visited: set[str] = set()
        self.properties = 0
        self.problems: list[Problem] = []

    def report(self, where: str, found: tuple[Kind, str] | None) -> None:
        if found:
            self.problems.append(Problem(self.path, self.method, where, found[0], found[1]))

    def parameter(self, where: str, official: Mapping[str, Any], ours: Mapping[str, Any] | None) -> None:
        self.properties += 1
        if ours is None:
            self.report(where, ("missing", "parameter not accepted"))
        else:
            o, u = _flatten(official.get("schema"), self.official), _flatten(ours.get("schema"), self.ours)
            self.report(where, _diff(o, u))

    def body(self, where: str, official: Any, ours: Any | None) -> None:
        """Walk a body schema; when ours has none, every top-level property is missing."""
        # Components are entered once per body, not per operation: the request and the response
        # of POST /fine_tuning/jobs share FineTuneMethod, and the response's copy must be checked too.
        self.visited = set()
        self.walk(_flatten(official, self.official), _flatten(ours, self.ours), where)

    def walk(self, o: _Node, u: _Node | None, where: str) -> None:
        """Compare the children of `o` with `u`'s; `u` is None below a property ours lacks."""
        if o.refs and o.refs <= self.visited:
            return
        self.visited |= o.refs
        if o.variants:
            for i, (ov, uv) in enumerate(_pair(o.variants, (u.variants or (u,)) if u else ())):
                self.walk(ov, uv, f"{where}<{ov.name or i}>")
            return
        if u is not None and u.variants:
            u = _pair((o,), u.variants)[0][1]
        for name, schema in o.properties.items():
            self.properties += 1
            child, theirs = _flatten(schema, self.official), None
            if u is not None and name in u.properties:
                theirs = _flatten(u.properties[name], self.ours)
                self.report(f"{where}.{name}", _diff(child, theirs))
            elif u is not None:
                self.report(f"{where}.{name}", ("missing", "property not in our schema"))
            self.walk(child, theirs, f"{where}.{name}")
        for official, mine, suffix in (
            (o.items, u and u.items, "[]"),
            (o.additional, u and u.additional, "{}"),
        ):
            if official is not None:
                theirs = None if u is None else _flatten(mine, self.ours)
                self.walk(_flatten(official, self.official), theirs, where + suffix)


def _template(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path.rstrip("/") or "/")


def _operations(item: Any) -> list[tuple[str, Mapping[str, Any]]]:
    if not isinstance(item, Mapping):
        return []
    return [(m, op) for m, op in item.items() if m in _METHODS and isinstance(op, Mapping)]


def _parameters(
    doc: Mapping[str, Any], path: str, item: Mapping[str, Any], op: Mapping[str, Any]
) -> dict[tuple[str, str], Any]:
    """Parameters keyed by (in, name); path parameters are keyed by position in the template,
    since the two specs may name them differently."""
    positions = {name: str(i) for i, name in enumerate(re.findall(r"\{([^}:]*)", path))}
    merged: dict[tuple[str, str], Any] = {}
    for raw in [*item.get("parameters", ()), *op.get("parameters", ())]:
        param = _deref(doc, raw)
        name = positions.get(param["name"], param["name"]) if param["in"] == "path" else param["name"]
        merged[(param["in"], name)] = param
    return merged


def _json_schema(doc: Mapping[str, Any], holder: Any, media: str = "application/json") -> Any | None:
    content = (_deref(doc, holder) or {}).get("content") or {}
    return (content.get(media) or {}).get("schema")


def _compare_operation(official: Mapping[str, Any], ours: Mapping[str, Any], path: str, method: str,
                       match: tuple[str, Mapping[str, Any], Mapping[str, Any]]) -> _Walk:
    item, op = official["paths"][path], official["paths"][path][method]
    our_path, our_item, our_op = match
    walk = _Walk(official, ours, path, method)
    our_params = _parameters(ours, our_path, our_item, our_op)
    for key, param in _parameters(official, path, item, op).items():
        walk.parameter(f"{param['in']} {param['name']}", param, our_params.get(key))

    body, our_body = op.get("requestBody"), our_op.get("requestBody")
    if (schema := _json_schema(official, body)) is not None:
        walk.body("request ", schema, _json_schema(ours, our_body))
    if (schema := _json_schema(official, body, "multipart/form-data")) is not None:
        # Multipart diffs count as problems, but OGX leaves their properties out of the denominator.
        side = _Walk(official, ours, path, method)
        side.body("request multipart ", schema, _json_schema(ours, our_body, "multipart/form-data"))
        walk.problems += side.problems

    our_responses = {str(status): response for status, response in (our_op.get("responses") or {}).items()}
    for status, response in (op.get("responses") or {}).items():
        if str(status).startswith("2") and (schema := _json_schema(official, response)) is not None:
            walk.body(f"response {status} ", schema, _json_schema(ours, our_responses.get(str(status))))
    return walk


@dataclass
class _Tally:
    total: int = 0
    implemented: int = 0
    properties: int = 0
    problems: list[Problem] = field(default_factory=list)


def compare(
    official: dict, ours: dict, *, categories: Iterable[str], ignore: Iterable[Deviation] = ()
) -> ConformanceReport:
    """Score `ours` (paths prefixed with /v1) against OpenAI's `official` spec for the given tags.

    Only OpenAI operations whose path's first tag is in `categories` count. Operations we lack show
    in `endpoints_implemented` but do not lower the score; problems matched by `ignore` are dropped.
    """
    deviations = list(ignore)
    used: set[int] = set()
    our_ops: dict[tuple[str, str], tuple[str, Mapping[str, Any], Mapping[str, Any]]] = {}
    for our_path, our_item in (ours.get("paths") or {}).items():
        stripped = our_path[3:] if our_path.startswith("/v1/") else our_path
        for method, op in _operations(our_item):
            our_ops[(_template(stripped), method)] = (stripped, our_item, op)

    tallies = {category: _Tally() for category in categories}
    for path, item in (official.get("paths") or {}).items():
        operations = _operations(item)
        category = next((op["tags"][0] for _, op in operations if op.get("tags")), None)
        if category is None or (tally := tallies.get(category)) is None:
            continue
        for method, _ in operations:
            tally.total += 1
            if (match := our_ops.get((_template(path), method))) is None:
                continue
            walk = _compare_operation(official, ours, path, method, match)
            tally.implemented += 1
            tally.properties += walk.properties
            for problem in walk.problems:
                hits = [i for i, d in enumerate(deviations) if d.matches(problem)]
                used.update(hits)
                if not hits:
                    tally.problems.append(problem)

    return ConformanceReport(
        categories=tuple(
            CategoryScore(category, t.total, t.implemented, t.properties, tuple(t.problems))
            for category, t in tallies.items()
        ),
        unused_deviations=tuple(d for i, d in enumerate(deviations) if i not in used),
    )
