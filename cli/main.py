"""The `bulksms` command: global options, then one subcommand per operator task."""

from __future__ import annotations

import click

from cli.audit import audit
from cli.broadcasts import COMMANDS
from cli.client import ApiClient, check_base_url
from cli.inbox import inbox
from cli.keys import keys
from cli.limits import limits
from cli.lists import lists
from cli.opt_outs import opt_outs
from cli.templates import templates

DEFAULT_URL = "http://127.0.0.1:8000"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="BULKSMS_URL",
    default=DEFAULT_URL,
    show_default=True,
    show_envvar=True,
    help="Base URL of the bulksms API.",
)
@click.option(
    "--api-key",
    envvar="BULKSMS_API_KEY",
    show_envvar=True,
    # Never echoed anywhere, help included.
    show_default=False,
    help="API key (sent as X-API-Key).",
)
@click.option(
    "--timeout",
    envvar="BULKSMS_TIMEOUT",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    show_envvar=True,
    help="Seconds to wait for an answer.",
)
@click.version_option(package_name="bulksms", prog_name="bulksms")
@click.pass_context
def cli(ctx: click.Context, url: str, api_key: str | None, timeout: float) -> None:
    """Send and watch SMS broadcasts through the bulksms API.

    \b
    Exit status: 0 ok; 1 a watched broadcast ended with failures or was cancelled;
    2 usage or API error; 3 still running after --max-wait.
    """
    ctx.obj = ApiClient(check_base_url(url), api_key, timeout)


for command in (*COMMANDS, opt_outs, inbox, limits, keys, audit):
    cli.add_command(command)
for command in (lists, templates):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="bulksms")
