"""Every environment variable mlipx-serve reads, named and parsed in this one place.

Imports nothing but ``os`` (``mlipx_hook`` reads ``HOOK`` at every Python start-up).
The command line shows the ones its options stand for in ``--help``.
"""

import os

BROKER = "MLIPX_SERVE_BROKER"  # the broker's client endpoint (default: a private ipc socket)
USE_SERVE = "MLIPX_USE_SERVE"  # get_calculator() prefers the served model
MODELS = "MLIPX_SERVE_MODELS"  # models.py files, separated like PATH
TIMEOUT = "MLIPX_SERVE_TIMEOUT"  # seconds a served calculation may wait for its reply
CURVE_SERVER_KEY = "MLIPX_SERVE_CURVE_SERVER_KEY"  # the broker's public key (NAME.key)
CURVE_SECRET_KEY = "MLIPX_SERVE_CURVE_SECRET_KEY"  # this peer's pair (NAME.key_secret)
HOOK = "MLIPX_SERVE_HOOK"  # 0/false/no/off: leave mlipx as it is
CLUSTER_DIR = "MLIPX_SERVE_CLUSTER_DIR"  # connection files and job output (shared filesystem)
CONNECT = "MLIPX_SERVE_CONNECT"  # a worker's connection file, written by a SLURM broker

CURVE = (CURVE_SERVER_KEY, CURVE_SECRET_KEY)
ALL = (BROKER, USE_SERVE, MODELS, TIMEOUT, CURVE_SERVER_KEY, CURVE_SECRET_KEY, HOOK,
       CLUSTER_DIR, CONNECT)

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


class EnvironmentValueError(ValueError):
    """A variable is set to something it cannot mean; the message names both."""


def text(name, environ=None):
    """The variable's value, or None when it is unset or empty."""
    return (os.environ if environ is None else environ).get(name) or None


def flag(name, environ=None):
    """True, False, or None for a value that is neither (the caller decides what to say)."""
    value = (text(name, environ) or "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    return None


def seconds(name, default, environ=None):
    value = text(name, environ)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise EnvironmentValueError(f"{name}={value!r} is not a number of seconds") from None


def paths(name, environ=None):
    return [part for part in (text(name, environ) or "").split(os.pathsep) if part.strip()]
