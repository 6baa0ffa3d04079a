"""GET /openapi.json (the hand-written OpenAPI 3.1 document) and GET /docs (Swagger UI over it).

Every asset of /docs is vendored under static/docs and served here, so the page works on a machine with no
way out and under a Content-Security-Policy that allows this origin only.
"""

from __future__ import annotations

import functools
import json
from html import escape
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, url_for

DOCUMENT = Path(__file__).resolve().parent / "openapi.json"

bp = Blueprint("openapi", __name__, static_folder="static/docs", static_url_path="/docs/assets")

# data: images are the icons swagger-ui.css carries inline; nothing is fetched from another origin.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


@functools.cache
def document_bytes() -> bytes:
    """The document as shipped; read once per process, it never changes while the process runs."""
    return DOCUMENT.read_bytes()


def load_document() -> dict[str, Any]:
    """A fresh parsed copy of the document, safe for the caller to modify."""
    document: dict[str, Any] = json.loads(document_bytes())
    return document


@bp.get("/openapi.json")
def openapi_document() -> Response:
    response = Response(document_bytes(), mimetype="application/json")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Access-Control-Allow-Origin"] = "*"  # a public description of a public API
    return response


@bp.get("/docs")
def docs_page() -> Response:
    def asset(name: str) -> str:
        return escape(url_for("openapi.static", filename=name))

    html = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>OrderFlow API</title>
<link rel="icon" type="image/png" href="{asset("favicon-32x32.png")}">
<link rel="stylesheet" href="{asset("swagger-ui.css")}">
</head>
<body>
<div id="swagger-ui" data-spec-url="{escape(url_for("openapi.openapi_document"))}"></div>
<script src="{asset("swagger-ui-bundle.js")}"></script>
<script src="{asset("docs.js")}"></script>
</body>
</html>
"""
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


__all__ = ["DOCUMENT", "bp", "document_bytes", "load_document"]
