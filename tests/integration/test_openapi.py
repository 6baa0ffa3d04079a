"""The OpenAPI document is valid 3.1 and exact about the app, and /docs renders it from local assets only."""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
from flask import Flask
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from werkzeug.serving import make_server

from app.api.openapi import load_document
from app.api.problems import Problem
from app.api.validation import MAX_BODY, MAX_ID, MAX_LINES, MAX_QUANTITY, parse_idempotency_key, parse_order
from app.domain import OrderStatus
from tests.deploy.tools import require_tool
from tests.integration.conftest import Stack

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

# CONTRACT section 3, the table of POST /api/orders, plus the 503 every database route may answer.
PLACE_ORDER_STATUSES = {"201", "400", "402", "409", "413", "415", "422"} | {"503"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return load_document()


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    # The document's components ride along so that "#/components/..." references resolve.
    root = {**schema, "components": document["components"]}
    return Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _flask_operations(app: Flask) -> set[tuple[str, str]]:
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue  # vendored files (the assets of /docs), not API routes
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in {"HEAD", "OPTIONS"}:
                operations.add((path, method.lower()))
    return operations


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document, cls=OpenAPIV31SpecValidator)


def test_served_document_is_the_shipped_one(stack: Stack, document: dict[str, Any]) -> None:
    response = stack.client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == document


def test_every_flask_route_is_documented_and_every_documented_route_exists(
    stack: Stack, document: dict[str, Any]
) -> None:
    documented = {(path, method) for path, method, _ in _operations(document)}
    served = _flask_operations(stack.app)
    assert served - documented == set(), "routes missing from the document"
    assert documented - served == set(), "documented routes the app does not serve"


def test_place_order_documents_exactly_the_statuses_of_the_contract(document: dict[str, Any]) -> None:
    responses = document["paths"]["/api/orders"]["post"]["responses"]
    assert set(responses) == PLACE_ORDER_STATUSES
    assert "Location" in responses["201"]["headers"]
    assert "Idempotent-Replayed" in responses["201"]["headers"]


def test_request_limits_are_the_ones_the_api_enforces(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert (schemas["Id"]["minimum"], schemas["Id"]["maximum"]) == (1, MAX_ID)
    line = schemas["OrderLineRequest"]["properties"]
    assert (line["quantity"]["minimum"], line["quantity"]["maximum"]) == (1, MAX_QUANTITY)
    lines = schemas["OrderRequest"]["properties"]["lines"]
    assert (lines["minItems"], lines["maxItems"]) == (1, MAX_LINES)
    assert schemas["OrderRequest"]["properties"]["currency"]["enum"] == ["USD"]
    assert set(schemas["OrderStatus"]["enum"]) == {s.value for s in OrderStatus}
    query = {p["name"]: p["schema"] for p in document["paths"]["/api/orders"]["get"]["parameters"]}
    assert (query["limit"]["minimum"], query["limit"]["maximum"], query["limit"]["default"]) == (1, 500, 50)
    assert str(MAX_BODY) in str(document["components"]["responses"]["PayloadTooLarge"])


def _parser_accepts_order(body: Any) -> bool:
    try:
        parse_order(body)
    except Problem:
        return False
    return True


def _line(product_id: Any = 1, quantity: Any = 1) -> dict[str, Any]:
    return {"product_id": product_id, "quantity": quantity}


@pytest.mark.parametrize(
    "body",
    [
        {"customer_id": 1, "lines": [_line()]},
        {"customer_id": MAX_ID, "lines": [_line(MAX_ID, MAX_QUANTITY)] * MAX_LINES, "currency": "USD"},
        {"customer_id": 1, "lines": [_line()], "unknown": {"ignored": True}},
        {"customer_id": 0, "lines": [_line()]},
        {"customer_id": MAX_ID + 1, "lines": [_line()]},
        {"customer_id": True, "lines": [_line()]},
        {"customer_id": "1", "lines": [_line()]},
        {"customer_id": 1, "lines": []},
        {"customer_id": 1, "lines": [_line()] * (MAX_LINES + 1)},
        {"customer_id": 1, "lines": [_line(quantity=0)]},
        {"customer_id": 1, "lines": [_line(quantity=MAX_QUANTITY + 1)]},
        {"customer_id": 1, "lines": [_line(product_id=False)]},
        {"customer_id": 1, "lines": [{"product_id": 1}]},
        {"customer_id": 1, "lines": [_line()], "currency": "EUR"},
        {"customer_id": 1, "lines": [_line()], "currency": None},
        {"lines": [_line()]},
        [],
    ],
)
def test_order_schema_and_parser_agree_at_the_boundaries(document: dict[str, Any], body: Any) -> None:
    schema = {"$ref": "#/components/schemas/OrderRequest"}
    assert _validator(document, schema).is_valid(body) == _parser_accepts_order(body)


@pytest.mark.parametrize(
    "key", ["a", "!", "~" * 255, "order-1:2/3", "", "a" * 256, "a b", "\x7f", "caf\u00e9", "\t"]
)
def test_idempotency_key_schema_and_parser_agree(document: dict[str, Any], key: str) -> None:
    schema = document["components"]["parameters"]["IdempotencyKey"]["schema"]
    try:
        parse_idempotency_key(key)
        accepted = True
    except Problem:
        accepted = False
    assert _validator(document, schema).is_valid(key) == accepted


def _examples(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """Every example of the document with the schema it illustrates."""
    for path, method, operation in _operations(document):
        where = f"{method.upper()} {path}"
        for parameter in (_resolve(document, p) for p in operation.get("parameters", [])):
            for name, example in parameter.get("examples", {}).items():
                yield f"{where} parameter {parameter['name']} {name}", parameter["schema"], example["value"]
            if "example" in parameter:
                yield f"{where} parameter {parameter['name']}", parameter["schema"], parameter["example"]
        bodies = [("request", operation.get("requestBody", {"content": {}}))]
        bodies += [(status, response) for status, response in operation["responses"].items()]
        for label, holder in bodies:
            for media_type, content in _resolve(document, holder).get("content", {}).items():
                if "example" in content:
                    yield f"{where} {label} {media_type}", content["schema"], content["example"]
                for name, example in content.get("examples", {}).items():
                    value = _resolve(document, example)["value"]
                    yield f"{where} {label} {media_type} {name}", content["schema"], value


def test_every_example_fits_its_schema(document: dict[str, Any]) -> None:
    checked = 0
    for where, schema, value in _examples(document):
        errors = [e.message for e in _validator(document, schema).iter_errors(value)]
        assert errors == [], where
        checked += 1
    assert checked >= 40  # every operation has examples; a broken walk must not pass by checking nothing


def test_admin_data_routes_and_only_they_need_the_bearer_token(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, method, operation in _operations(document):
        admin_data = path.startswith("/admin/") and path != "/admin/"
        assert (operation.get("security") == [{"bearerAuth": []}]) == admin_data, f"{method} {path}"
        assert ("401" in operation["responses"]) == admin_data, f"{method} {path}"


def test_every_error_is_documented_as_problem_json(document: dict[str, Any]) -> None:
    for path, method, operation in _operations(document):
        for status, response in operation["responses"].items():
            content = _resolve(document, response).get("content", {})
            if int(status) >= 400 and path != "/health/ready":  # readiness reports its 503 as health+json
                assert list(content) == ["application/problem+json"], f"{method} {path} {status}"


class _AssetLinks(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href"} and value:
                self.urls.append(value)


def test_docs_page_references_only_local_assets_and_they_answer(stack: Stack) -> None:
    page = stack.client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    links = _AssetLinks()
    links.feed(page.get_data(as_text=True))
    assert len(links.urls) >= 3  # stylesheet, Swagger UI bundle, our initializer
    for url in links.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = stack.client.get(url)
        assert asset.status_code == 200, url
        assert asset.get_data(), url
    # This origin only; data: images are the icons swagger-ui.css carries inline.
    policy = page.headers["Content-Security-Policy"]
    sources = {source for part in policy.split(";") for source in part.split()[1:]}
    assert sources <= {"'self'", "'none'", "data:"}, policy
    assert "default-src 'self'" in policy


@pytest.fixture
def live_api(stack: Stack) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, stack.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_docs_page_renders_every_operation_in_chromium(live_api: str, document: dict[str, Any]) -> None:
    chromium = require_tool("chromium")
    with tempfile.TemporaryDirectory(prefix="orderflow-docs-chromium-") as profile:
        result = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=10000", "--dump-dom", f"{live_api}/docs"],
            capture_output=True, text=True, timeout=90, check=False,
        )
    dom, log = result.stdout, result.stderr
    assert "Content Security Policy" not in log, log[-2000:]
    assert "Failed to load resource" not in log, log[-2000:]
    missing = [op["operationId"] for _, _, op in _operations(document) if op["operationId"] not in dom]
    assert missing == [], dom[:2000]
