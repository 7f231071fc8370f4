"""`granian --interface wsgi api.wsgi:app`: stops at start-up naming a bad variable."""

import sys

from shared.config import ConfigError, get_settings

try:
    get_settings()
except ConfigError as error:
    print(error, file=sys.stderr)
    sys.exit(2)

from api import create_app  # noqa: E402  (only once the configuration is known good)

app = create_app()
