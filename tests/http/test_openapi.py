"""GET /openapi.json and GET /docs on a real ``python -m server``: a valid OpenAPI 3.1
document that describes every function, param and route as the server really answers,
and a page of our own that renders it with nothing from another host."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from handlers.errors import TABLE
from protos.dcf.v1 import dcf_pb2
from server.http.guard import PAGE_POLICY
from server.http.openapi import param_schema
from tests.support import Service
from tests.support.http import CHROMIUM, CHROMIUM_ARGS
from tests.support.media import photo

JSON = "application/json"


@pytest.fixture(scope="module")
def api(dcf: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dcf.http_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def spec(api: httpx.Client) -> dict:
    reply = api.get("/openapi.json")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == JSON
    return reply.json()


@pytest.fixture(scope="module")
def functions(api: httpx.Client) -> list[dict]:
    return api.get("/v1/functions").json()


def conforms(spec: dict, schema: str, instance: object) -> None:
    """``instance`` is valid against components.schemas[``schema``] of ``spec``."""
    root = {"$ref": f"#/components/schemas/{schema}", "components": spec["components"]}
    errors = [error.message for error in OAS31Validator(root).iter_errors(instance)]
    assert not errors, (schema, errors)


def test_the_document_is_valid_openapi_3_1(spec):
    assert spec["openapi"].startswith("3.1.")
    validate(spec, cls=OpenAPIV31SpecValidator)  # raises, saying where, if it is not


def test_every_function_alias_and_param_is_described(spec, functions):
    paths = spec["paths"]
    assert {"hello-dcf", "ssd", "send-wav", "ssd-video"} <= {fn["name"] for fn in functions}
    for fn in functions:
        for name in (fn["name"], *fn["aliases"]):
            operation = paths[f"/v1/functions/{name}"]["post"]
            query = {p["name"]: p for p in operation["parameters"] if p.get("in") == "query"}
            assert list(query) == [s["name"] for s in fn["param_specs"]], name
            for shown in fn["param_specs"]:
                described = query[shown["name"]]
                assert described["description"] == shown["description"]
                schema = described["schema"]
                assert schema["type"] == shown["type"]
                for bound in ("minimum", "maximum"):
                    assert schema.get(bound) == shown.get(bound), (name, shown)
                if "choices" in shown:
                    assert schema["enum"] == shown["choices"]
                if "default" in shown:
                    assert str(schema["default"]).lower() == shown["default"]
            assert list(operation["requestBody"]["content"]) == [fn["input_content_type"]]
            answers = operation["responses"]
            assert list(answers["200"]["content"]) == [fn["output_content_type"]]
            statuses = {str(answer.http) for answer in TABLE.values()} | {"405"}
            assert statuses <= set(answers), name
            for status in statuses:
                (schema,) = answers[status]["content"][JSON].values()
                assert schema == {"$ref": "#/components/schemas/Error"}


def test_typed_params_read_as_their_types(spec):
    threshold = next(
        p
        for p in spec["paths"]["/v1/functions/ssd"]["post"]["parameters"]
        if p.get("name") == "threshold"
    )
    assert threshold["schema"] == {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5}
    binsize = next(
        p
        for p in spec["paths"]["/v1/functions/stft"]["post"]["parameters"]
        if p.get("name") == "binsize"
    )
    assert binsize["schema"] == {
        "type": "integer",
        "minimum": 16,
        "maximum": 32768,
        "default": 1024,
    }
    assert all(type(binsize["schema"][key]) is int for key in ("minimum", "maximum", "default"))


def test_param_schema_keeps_what_it_cannot_type():
    spec = dcf_pb2.ParamSpec(name="mode", type="boolean", default="maybe", choices=["a"])
    assert param_schema(spec) == {"type": "boolean", "enum": ["a"], "default": "maybe"}


def test_the_v2_routes_are_described(spec, functions):
    paths = spec["paths"]
    for path, method in [
        ("/v2", "get"),
        ("/v2/health/live", "get"),
        ("/v2/health/ready", "get"),
        ("/v2/models/{model_name}", "get"),
        ("/v2/models/{model_name}/ready", "get"),
        ("/v2/models/{model_name}/infer", "post"),
        ("/v2/models/{model_name}/versions/{model_version}", "get"),
        ("/v2/models/{model_name}/versions/{model_version}/ready", "get"),
        ("/v2/models/{model_name}/versions/{model_version}/infer", "post"),
    ]:
        assert method in paths[path], path
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {JSON, "application/octet-stream"}
    assert "Inference-Header-Content-Length" in [p.get("name") for p in infer["parameters"]]
    assert infer["responses"]["404"]["content"][JSON]["schema"] == {
        "$ref": "#/components/schemas/V2Error"
    }
    names = spec["components"]["parameters"]["ModelName"]["schema"]["enum"]
    assert names == [name for fn in functions for name in (fn["name"], *fn["aliases"])]


def test_the_shapes_are_what_the_server_answers(api, spec, functions):
    """Real answers conform to the schemas the document gives them."""
    for fn in functions:
        conforms(spec, "FunctionInfo", fn)
    conforms(spec, "Error", api.post("/v1/functions/no-such-function").json())
    conforms(spec, "ServerMetadata", api.get("/v2").json())
    conforms(spec, "ModelMetadata", api.get("/v2/models/ssd").json())
    conforms(spec, "V2Error", api.get("/v2/models/no-such-model").json())
    request = {
        "id": "1",
        "parameters": {"threshold": 0.4, "annotate": False},
        "inputs": [{"name": "INPUT", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
        "outputs": [{"name": "OUTPUT"}],
    }
    conforms(spec, "InferRequest", request)
    image = {
        "inputs": [
            {
                "name": "INPUT",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(photo()).decode()],
                "parameters": {"content_type": "base64"},
            }
        ]
    }
    conforms(spec, "InferRequest", image)
    answer = api.post("/v2/models/ssd/infer", json=image)
    assert answer.status_code == 200, answer.text
    conforms(spec, "InferResponse", answer.json())


# ---------------------------------------------------------------- /docs


FOREIGN = re.compile(r"""(?:https?:)?//[\w.-]+""")


def test_docs_page_is_served_with_the_page_policy(api):
    page = api.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == PAGE_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    assets = re.findall(r"""(?:src|href)="([^"]+)\"""", page.text)
    assert "/static/docs.js" in assets and "/openapi.json" in assets
    for asset in assets:
        assert asset.startswith(("/", "#", "data:")), asset  # nothing from another host
    for name, kind in (("docs.js", "javascript"), ("docs.css", "css")):
        reply = api.get(f"/static/{name}")
        assert reply.status_code == 200 and kind in reply.headers["content-type"]
        assert not FOREIGN.search(reply.text), f"{name} names another host"
    # The description itself is data, never a document that runs anything.
    assert "sandbox" in api.get("/openapi.json").headers["content-security-policy"]


def test_docs_page_renders_every_route_in_a_browser(dcf, spec, functions):
    """Debian's chromium (as tests/http/test_page.py drives it): every route shows, nothing
    is fetched from another host, and the page policy refuses nothing the page does."""
    if not CHROMIUM.exists():
        pytest.fail(f"no browser: {CHROMIUM} is missing (make browser installs it)")
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    hosts: set[str] = set()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on(
                "console",
                lambda message: problems.append(message.text) if message.type == "error" else None,
            )
            page.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
            page.goto(dcf.http_url + "/docs")
            page.wait_for_selector("section.operation", timeout=30_000)
            titles = page.locator("section.operation h3").all_text_contents()
            shapes = page.locator("section.schema h3").all_text_contents()
        finally:
            browser.close()
    assert not problems, problems
    assert hosts <= {urlsplit(dcf.http_url).netloc, ""}, hosts
    shown = {" ".join(title.split()) for title in titles}
    for path, item in spec["paths"].items():
        for method in item:
            if method != "parameters":
                assert f"{method.upper()} {path}" in shown, (method, path)
    assert {"Error", "V2Error", "InferRequest"} <= set(shapes)
    assert {f"POST /v1/functions/{fn['name']}" for fn in functions} <= shown
