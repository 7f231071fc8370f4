"""`python -m sandbox`: serve the Plivo sandbox until interrupted."""

from __future__ import annotations

import argparse
import logging

from sandbox.config import SandboxConfig, describe, env_var, field_names
from sandbox.server import API_PREFIX, create_app, make_sandbox_server

log = logging.getLogger("sandbox")

EPILOG = """\
Lists take commas (a,b) or JSON; maps take key=value,key=value or JSON.
Every setting can also be changed while running: POST /sandbox/config with a partial JSON
object; GET /sandbox/config shows them all (but the token).

Endpoints:
  POST /v1/Account/<auth_id>/Message/  Plivo's send-message API (what the SDK calls)
  GET  /v1/Account/<auth_id>/Message/<uuid>/
                                       Plivo's Message Get: the message detail record
  GET  /v1/Account/<auth_id>/Message/  Plivo's Message List: filters, limit <= 20, offset;
                                       list_request_limit per list_request_window
  GET  /messages/<uuid>                one message: dst, src, type, text, media, status, ...
  GET  /stats                          counters: sends per number, duplicates, queues, 429s,
                                       faults, outcomes, callbacks
  GET  /stats/requests                 one {t, src, type, count} per accepted request
  POST /stats/reset                    forget everything, including queues and callbacks
  POST /sandbox/inbound                {"from", "to", "text", "url"?, "intent"?}: posts a
                                       signed inbound message to url (or inbound_url)
  GET  /health
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="A local Plivo-compatible API server for demos, tests and benchmarks. "
        "Settings come from these flags, else from SANDBOX_* environment variables, "
        "else from the defaults shown.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8020)
    for name in field_names():
        help_text, default = describe(name)
        shown = "" if name == "auth_token" else f", default {default!r}"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            metavar="VALUE",
            help=f"{help_text} ({env_var(name)}{shown})",
        )
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> SandboxConfig:
    flags = {name: getattr(args, name) for name in field_names() if getattr(args, name) is not None}
    return SandboxConfig.from_env().with_text(flags)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = build_config(args)
    except ValueError as error:
        raise SystemExit(f"python -m sandbox: {error}") from None
    app = create_app(config)
    server = make_sandbox_server(app, args.host, args.port)
    base_url = f"http://{args.host}:{server.port}"
    log.info(
        "Plivo sandbox on %s (auth_id %s); SDK base URI %s%s; settings at %s/sandbox/config",
        base_url,
        config.auth_id,
        base_url,
        API_PREFIX,
        base_url,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        app.extensions["sandbox"].close()
        server.server_close()


if __name__ == "__main__":
    main()
