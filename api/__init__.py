"""The intake API: `create_app()` builds it; blueprints own their routes."""

from __future__ import annotations

import logging

from flask import Flask

from api.headers import add_security_headers
from api.status_intake import StatusIntake
from shared.config import Settings, get_settings
from shared.logs import configure


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app for `settings` (default: from the environment and `.env`)."""
    settings = settings or get_settings()
    configure(settings.log_level, settings)
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    # Werkzeug answers 413 itself once a body passes this size, before we parse it.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # Flask 3.1 caps one multipart text field at 500,000 bytes: the console's pasted numbers
    # (~35,000 of them) would be a 413 long before the body limit.
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_body_bytes
    app.json.sort_keys = False

    from api import (
        actions,
        audit,
        auth,
        broadcasts,
        contact_lists,
        delivery_reports,
        errors,
        health,
        inbound,
        keys,
        limits,
        metrics,
        mms,
        openapi,
        opt_outs,
        recipients,
        request_ids,
        templates,
        webhooks,
    )

    # Delivery reports skip Flask (thousands a second); see api/status_intake.py.
    app.wsgi_app = StatusIntake(app.wsgi_app, settings)
    errors.init_app(app)
    app.after_request(add_security_headers)
    # Every /v1 route: the key and its scopes, the request limits, then the audit trail.
    auth.init_app(app)
    audit.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(broadcasts.bp)
    app.register_blueprint(recipients.bp)
    app.register_blueprint(actions.bp)
    app.register_blueprint(mms.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(limits.bp)
    app.register_blueprint(opt_outs.bp)
    app.register_blueprint(inbound.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(delivery_reports.bp)
    app.register_blueprint(keys.bp)
    app.register_blueprint(templates.bp)
    app.register_blueprint(contact_lists.bp)
    # The operator console (HTML under /console), whose pages call the routes above.
    from api import console

    console.init_app(app)
    # Outermost, around the delivery-report fast path too: /metrics and request timing,
    # then the request id every log line of the request carries.
    metrics.init_app(app)
    request_ids.init_app(app)

    if settings.sandbox_mode:
        logging.getLogger("api").warning(
            "%s (%s); API key %r accepted",
            health.SANDBOX_NOTICE,
            settings.sandbox_url,
            "dev-key" if not settings.api_keys else "from API_KEYS",
        )
    return app
