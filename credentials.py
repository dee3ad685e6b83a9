"""Secrets (MQTT passwords) from a file or an environment variable; never logged. Used by the agent and the
collector, so it lives outside both (the fleet side must not import the agent)."""
import os
from typing import Optional

from .errors import ConfigError


def read_password(file: Optional[str], env: Optional[str], file_field: str, env_field: str) -> Optional[str]:
    """The password in ``file`` (trailing newline removed) or in environment variable ``env``; None when neither
    is given. Errors name the option or config field (``file_field`` / ``env_field``), never the value."""
    if file:
        try:
            with open(file, encoding="utf-8") as f:
                return f.read().strip("\r\n")
        except OSError as exc:
            raise ConfigError("cannot read the password file (%s)" % exc.strerror, file=file, field=file_field)
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError("environment variable %s is not set" % env, field=env_field)
        return value
    return None
