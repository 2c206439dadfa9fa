"""The oasdiff-style conformance score, on small hand-written specs and on OpenAI's own."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftserve.conformance import ConformanceReport, Deviation, compare

OFFICIAL_SPEC = Path("/work/shared/reference/openai-openapi/openapi.yaml")


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def official() -> dict[str, Any]:
    """Three "Things" operations (29 properties) plus an out-of-scope "Widgets" one."""
    thing_id = {"in": "path", "name": "thing_id", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "paths": {
            "/things": {
                "get": {
                    "tags": ["Things"],
                    "parameters": [
                        {"in": "query", "name": "limit", "schema": {"type": "integer", "default": 20}},
                        {"in": "query", "name": "after", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _json(_ref("ThingList"))},
                },
                "post": {
                    "tags": ["Things"],
                    "requestBody": {"content": {"application/json": {"schema": _ref("CreateThing")}}},
                    "responses": {"200": _json(_ref("Thing"))},
                },
            },
            "/things/{thing_id}": {
                "get": {
                    "tags": ["Things"],
                    "parameters": [thing_id],
                    "responses": {"200": _json(_ref("Thing"))},
                },
            },
            "/widgets": {"get": {"tags": ["Widgets"], "responses": {"200": _json(_ref("Thing"))}}},
        },
        "components": {
            "schemas": {
                "Thing": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"type": "string", "enum": ["thing"]},
                        "status": {"type": "string", "enum": ["queued", "running", "done"]},
                        "finished_at": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                        "size": {"type": "integer"},
                        "batch_size": {
                            "oneOf": [{"type": "string", "enum": ["auto"]}, {"type": "integer"}],
                            "default": "auto",
                        },
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "ThingList": {
                    "type": "object",
                    "properties": {
                        "object": {"type": "string"},
                        "data": {"type": "array", "items": _ref("Thing")},
                        "has_more": {"type": "boolean"},
                    },
                },
                "CreateThing": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "suffix": {"type": "string", "nullable": True},
                    },
                },
            }
        },
    }


def ours() -> dict[str, Any]:
    """The official spec as FastAPI would serve it: /v1 prefix, its own name for the path parameter."""
    spec = copy.deepcopy(official())
    spec["paths"] = {"/v1" + path: item for path, item in spec["paths"].items() if path != "/widgets"}
    item = spec["paths"].pop("/v1/things/{thing_id}")
    item["get"]["parameters"][0]["name"] = "id"
    spec["paths"]["/v1/things/{id}"] = item
    return spec


def thing(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["components"]["schemas"]["Thing"]["properties"]


def score(ours_spec: dict[str, Any], **kwargs: Any) -> ConformanceReport:
    return compare(official(), ours_spec, categories=["Things"], **kwargs)


def problems(report: ConformanceReport) -> set[tuple[str, str, str, str]]:
    return {(p.path, p.method, p.where, p.kind) for c in report.categories for p in c.problems}


def test_identical_specs_score_100_and_count_every_official_property() -> None:
    report = score(ours())
    [things] = report.categories
    assert (things.endpoints_implemented, things.endpoints_total) == (3, 3)
    # GET /things: 2 params + ThingList 3 + Thing 7; POST: CreateThing 2 + Thing 7; GET /things/{}: 1 + 7
    assert things.properties == 29
    assert things.problems == ()
    assert report.score == 100.0


def test_a_missing_property_is_reported_once_per_place_it_appears() -> None:
    spec = ours()
    del thing(spec)["size"]
    report = score(spec)
    assert problems(report) == {
        ("/things", "get", "response 200 .data[].size", "missing"),
        ("/things", "post", "response 200 .size", "missing"),
        ("/things/{thing_id}", "get", "response 200 .size", "missing"),
    }
    assert report.score == round((1 - 3 / 29) * 100, 1)


def test_a_missing_query_parameter_is_one_problem() -> None:
    spec = ours()
    spec["paths"]["/v1/things"]["get"]["parameters"].pop()
    report = score(spec)
    assert problems(report) == {("/things", "get", "query after", "missing")}
    assert report.score == 96.6


def test_a_type_mismatch() -> None:
    spec = ours()
    thing(spec)["size"] = {"type": "number"}
    assert {kind for *_, kind in problems(score(spec))} == {"type"}


@pytest.mark.parametrize(
    "finished_at",
    [
        {"type": ["integer", "null"]},
        {"type": "integer", "nullable": True},
        {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
    ],
)
def test_the_three_nullable_spellings_are_equivalent(finished_at: dict[str, Any]) -> None:
    spec = ours()
    thing(spec)["finished_at"] = finished_at
    # OpenAI spells `suffix` with 3.0's `nullable: true`; pydantic spells it with anyOf.
    spec["components"]["schemas"]["CreateThing"]["properties"]["suffix"] = {
        "anyOf": [{"type": "string"}, {"type": "null"}]
    }
    assert score(spec).score == 100.0


def test_a_nullability_mismatch() -> None:
    spec = ours()
    thing(spec)["finished_at"] = {"type": "integer"}
    spec["components"]["schemas"]["CreateThing"]["properties"]["suffix"] = {"type": "string"}
    assert problems(score(spec)) == {
        ("/things", "get", "response 200 .data[].finished_at", "nullable"),
        ("/things", "post", "response 200 .finished_at", "nullable"),
        ("/things/{thing_id}", "get", "response 200 .finished_at", "nullable"),
        ("/things", "post", "request .suffix", "nullable"),
    }


def test_const_is_equivalent_to_a_one_value_enum() -> None:
    spec = ours()
    thing(spec)["object"] = {"const": "thing", "type": "string"}
    thing(spec)["batch_size"]["oneOf"][0] = {"const": "auto"}
    assert score(spec).score == 100.0


@pytest.mark.parametrize("values", [["queued", "running"], ["queued", "running", "done", "paused"]])
def test_an_enum_lacking_or_adding_values(values: list[str]) -> None:
    spec = ours()
    thing(spec)["status"]["enum"] = values
    report = score(spec)
    assert {(where, kind) for _, _, where, kind in problems(report)} == {
        ("response 200 .data[].status", "enum"),
        ("response 200 .status", "enum"),
    }


@pytest.mark.parametrize("default", [{"default": 1}, {}])
def test_a_changed_or_dropped_default(default: dict[str, Any]) -> None:
    spec = ours()
    batch_size = thing(spec)["batch_size"]
    del batch_size["default"]
    batch_size.update(default)
    assert {kind for *_, kind in problems(score(spec))} == {"default"}


def test_a_default_only_we_define_is_not_penalised() -> None:
    spec = ours()
    spec["components"]["schemas"]["ThingList"]["properties"]["has_more"]["default"] = False
    assert score(spec).score == 100.0


def test_a_null_default_counts_as_no_default() -> None:
    nulled = official()
    nulled["components"]["schemas"]["CreateThing"]["properties"]["suffix"]["default"] = None
    # FastAPI drops `default: null` from `Optional[str] = None`
    assert compare(nulled, ours(), categories=["Things"]).score == 100.0


def test_a_union_flattened_to_one_type_is_a_union_problem() -> None:
    spec = ours()
    thing(spec)["batch_size"] = {"type": "integer", "default": "auto"}
    assert {kind for *_, kind in problems(score(spec))} == {"union"}


def test_anyof_matches_oneof_and_nested_unions_are_spliced() -> None:
    spec = ours()
    # pydantic's spelling of `Literal["auto"] | int | None` against OpenAI's nested form
    thing(spec)["batch_size"] = {
        "anyOf": [{"const": "auto", "type": "string"}, {"type": "integer"}],
        "default": "auto",
    }
    assert score(spec).score == 100.0
    nested = official()
    auto_or_int = {"oneOf": [{"enum": ["auto"]}, {"type": "integer"}]}
    thing(nested)["batch_size"] = {"anyOf": [auto_or_int, {"type": "null"}]}
    thing(spec)["batch_size"] = {"anyOf": [{"const": "auto"}, {"type": "integer"}, {"type": "null"}]}
    assert compare(nested, spec, categories=["Things"]).score == 100.0


def test_unions_nested_inside_wider_unions_are_spliced() -> None:
    nested = official()
    auto_or_int = {"oneOf": [{"enum": ["auto"]}, {"type": "integer"}]}
    thing(nested)["size"] = {"anyOf": [auto_or_int, {"type": "number", "nullable": True}]}
    spec = ours()
    flat = [{"const": "auto"}, {"type": "integer"}, {"type": "number"}, {"type": "null"}]
    thing(spec)["size"] = {"anyOf": flat}
    assert compare(nested, spec, categories=["Things"]).score == 100.0


def test_union_variants_are_paired_by_component_name() -> None:
    def with_union(spec: dict[str, Any], variants: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        spec["components"]["schemas"].update(
            {name: {"type": "object", "properties": properties} for name, properties in variants}
        )
        thing(spec)["size"] = {"oneOf": [_ref(name) for name, _ in variants]}
        return spec

    a = {"x": {"type": "integer"}, "y": {"type": "string"}}
    b = {"x": {"type": "string"}, "z": {"type": "string"}}
    union = with_union(official(), [("A", a), ("B", b)])
    spec = with_union(ours(), [("B", {"x": {"type": "string"}}), ("A", {"x": {"type": "integer"}})])
    report = compare(union, spec, categories=["Things"])
    assert {where for path, _, where, _ in problems(report) if path == "/things/{thing_id}"} == {
        "response 200 .size<A>.y",
        "response 200 .size<B>.z",
    }


def test_null_in_an_enum_makes_it_nullable() -> None:
    spec = ours()
    thing(spec)["finished_at"] = {"type": "integer", "enum": [1, 2, None]}
    assert score(spec).score == 100.0  # restricting values OpenAI leaves open is not penalised
    thing(spec)["finished_at"]["enum"] = [1, 2]
    assert {kind for *_, kind in problems(score(spec))} == {"nullable"}


def test_only_success_responses_count() -> None:
    errors = official()
    errors["paths"]["/things/{thing_id}"]["get"]["responses"]["404"] = _json(
        {"type": "object", "properties": {"error": {"type": "object"}}}
    )
    report = compare(errors, ours(), categories=["Things"])
    assert (report.categories[0].properties, report.score) == (29, 100.0)


def test_a_union_response_is_compared_through_its_best_matching_variant() -> None:
    spec = ours()
    responses = spec["paths"]["/v1/things/{id}"]["get"]["responses"]
    responses["200"] = _json({"anyOf": [{"type": "string"}, _ref("Thing")]})
    assert score(spec).score == 100.0


def test_a_component_shared_by_request_and_response_is_checked_in_both() -> None:
    shared = official()
    post = shared["paths"]["/things"]["post"]
    post["requestBody"]["content"]["application/json"]["schema"] = _ref("Thing")
    spec = ours()
    spec["paths"]["/v1/things"]["post"]["requestBody"] = copy.deepcopy(post["requestBody"])
    del thing(spec)["size"]
    report = compare(shared, spec, categories=["Things"])
    assert {where for path, method, where, _ in problems(report) if method == "post"} == {
        "request .size",
        "response 200 .size",
    }
    assert report.categories[0].properties == 29 - 2 + 7


def test_multipart_bodies_are_compared_but_not_counted() -> None:
    upload = official()
    upload["paths"]["/things"]["post"]["requestBody"] = {
        "content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"}, "purpose": {"type": "string"},
        }}}}
    }
    spec = ours()
    spec["paths"]["/v1/things"]["post"]["requestBody"] = {
        "content": {"multipart/form-data": {"schema": {"properties": {"file": {"type": "string"}}}}}
    }
    report = compare(upload, spec, categories=["Things"])
    assert problems(report) == {("/things", "post", "request multipart .purpose", "missing")}
    assert report.categories[0].properties == 29 - 2


def test_a_missing_operation_does_not_lower_the_score() -> None:
    spec = ours()
    del spec["paths"]["/v1/things/{id}"]
    [things] = score(spec).categories
    assert (things.endpoints_implemented, things.endpoints_total, things.properties) == (2, 3, 21)
    assert things.score == 100.0


def test_a_missing_success_status_makes_every_top_level_property_missing() -> None:
    spec = ours()
    responses = spec["paths"]["/v1/things/{id}"]["get"]["responses"]
    responses["201"] = responses.pop("200")
    assert len(problems(score(spec))) == len(thing(official()))


def test_a_deviation_suppresses_exactly_its_problem() -> None:
    spec = ours()
    spec["paths"]["/v1/things"]["get"]["parameters"].pop()
    thing(spec)["size"] = {"type": "string"}
    documented = Deviation("/things", "GET", "query after", "missing", "cursor pagination not offered")
    stale = Deviation("/things", "post", "request .name", "type", "fixed since")
    report = score(spec, ignore=[documented, stale])
    assert ("/things", "get", "query after", "missing") not in problems(report)
    assert {kind for *_, kind in problems(report)} == {"type"}
    assert len(problems(report)) == 3
    assert report.unused_deviations == (stale,)


def test_refs_are_resolved_on_each_side_against_its_own_components() -> None:
    spec = ours()
    schemas = spec["components"]["schemas"]
    schemas["ThingObject"] = schemas.pop("Thing")
    schemas["ThingList"]["properties"]["data"]["items"] = _ref("ThingObject")
    # pydantic's older spelling of a described $ref
    described = {"allOf": [_ref("ThingObject")], "description": "x"}
    spec["paths"]["/v1/things"]["post"]["responses"]["200"] = _json(described)
    # inline on our side, a $ref on OpenAI's
    spec["paths"]["/v1/things/{id}"]["get"]["responses"]["200"] = _json(copy.deepcopy(schemas["ThingObject"]))
    assert score(spec).score == 100.0
    schemas["ThingObject"]["properties"]["size"] = {"type": "string"}
    assert len(problems(score(spec))) == 2  # the inline copy still matches


def test_recursive_schemas_terminate() -> None:
    tree = {
        "openapi": "3.1.0",
        "paths": {"/trees": {"get": {"tags": ["Trees"], "responses": {"200": _json(_ref("Node"))}}}},
        "components": {
            "schemas": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "value": {"type": "string"},
                        "children": {"type": "array", "items": _ref("Node")},
                        "loop": _ref("Loop"),
                    },
                },
                "Loop": {"anyOf": [_ref("Loop"), {"allOf": [_ref("Loop")]}, {"type": "string"}]},
            }
        },
    }
    [trees] = compare(tree, copy.deepcopy(tree), categories=["Trees"]).categories
    assert (trees.properties, trees.problems) == (3, ())


def test_the_official_spec_scores_100_against_itself(capsys: pytest.CaptureFixture[str]) -> None:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with OFFICIAL_SPEC.open() as f:
        spec = yaml.load(f, Loader=loader)  # noqa: S506 - a safe loader, picked for speed
    ours_spec = {**spec, "paths": {"/v1" + path: item for path, item in spec["paths"].items()}}
    report = compare(spec, ours_spec, categories=["Files", "Uploads", "Fine-tuning", "Models"])
    with capsys.disabled():
        print("\n" + report.table())
    assert report.score == 100.0
    assert all(c.properties > 0 and c.endpoints_implemented == c.endpoints_total for c in report.categories)
