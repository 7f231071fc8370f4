"""`python -m sandbox`: serve the Plivo sandbox until interrupted."""

from __future__ import annotations

import argparse
import logging

from sandbox.config import SandboxConfig, normalize_prefixes
from sandbox.server import API_PREFIX, create_app, make_sandbox_server

log = logging.getLogger("sandbox")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="A local Plivo-compatible API server for demos, tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8020)
    parser.add_argument("--auth-id", help="overrides SANDBOX_AUTH_ID")
    parser.add_argument("--auth-token", help="overrides SANDBOX_AUTH_TOKEN")
    parser.add_argument(
        "--invalid-prefixes",
        help="comma-separated digit prefixes reported as invalid numbers; "
        "overrides SANDBOX_INVALID_PREFIXES",
    )
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> SandboxConfig:
    config = SandboxConfig.from_env()
    if args.auth_id:
        config.auth_id = args.auth_id
    if args.auth_token:
        config.auth_token = args.auth_token
    if args.invalid_prefixes is not None:
        config.invalid_prefixes = normalize_prefixes(args.invalid_prefixes.split(","))
    return config


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = build_config(args)
    except ValueError as error:
        raise SystemExit(f"python -m sandbox: {error}") from None
    server = make_sandbox_server(create_app(config), args.host, args.port)
    base_url = f"http://{args.host}:{server.port}"
    log.info(
        "Plivo sandbox on %s (auth_id %s, invalid prefixes %s); SDK base URI %s%s",
        base_url,
        config.auth_id,
        ",".join(config.invalid_prefixes) or "none",
        base_url,
        API_PREFIX,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
