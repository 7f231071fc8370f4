"""`bulksms`: the operator's command line for the broadcasting API, over HTTP only, so it runs
from any machine that can reach the API."""
