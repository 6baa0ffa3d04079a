"""OrderFlow: an order API that keeps taking orders while its dependencies fail."""

from __future__ import annotations

from typing import Any

from flask import Flask

from app.config import Settings


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """The Flask application; everything it uses is built here, nothing at import time."""
    from app.api import register_blueprints
    from app.api.errors import register_error_handlers
    from app.api.validation import MAX_BODY
    from app.bootstrap import bootstrap
    from app.logs import configure_logging

    settings = settings or Settings.from_env()
    configure_logging()
    app = Flask(__name__)
    # A backstop for any reader of the body: werkzeug then never reads more than one byte past the limit.
    # The byte of slack is what read_json_body reads to tell a chunked body over the limit from one at it.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY + 1
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["orderflow"] = bootstrap(settings, **overrides)
    register_error_handlers(app)
    register_blueprints(app)
    return app


__all__ = ["create_app"]
