"""The one paho-mqtt client set-up (protocol, TLS, credentials, reconnect backoff) used by the agent, by
``edgesight doctor`` (so it tests exactly what the agent will do) and by the collector; secrets from a file or an
environment variable, never logged."""
import os
import ssl
from typing import Any, Dict, NamedTuple, Optional

from ..errors import ConfigError, require_module

# option names as each front end spells them, for error messages
AGENT_FIELDS = {"ca_file": "mqtt.tls.ca_file", "cert_file": "mqtt.tls.cert_file", "key_file": "mqtt.tls.key_file",
                "password_file": "mqtt.password_file", "password_env": "mqtt.password_env"}
CLI_FIELDS = {"ca_file": "--ca-file", "cert_file": "--cert-file", "key_file": "--key-file",
              "password_file": "--password-file", "password_env": "--password-env"}


class ClientSettings(NamedTuple):
    host: str
    port: int
    client_id: str
    protocol: str = "5"  # "5" | "3.1.1"
    username: Optional[str] = None
    password: Optional[str] = None
    tls: bool = False  # True with no ca_file: the system CA store
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    keepalive: int = 30
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    manual_ack: bool = False
    fields: Dict[str, str] = AGENT_FIELDS


def paho(what: str, extra: str) -> Any:
    return require_module("paho.mqtt.client", what, extra, package="paho-mqtt")


def make_client(s: ClientSettings, what: str = "The agent's MQTT link", extra: str = "agent") -> Any:
    """A configured, not yet connected paho 2.x client (callback API version 2)."""
    mqtt = paho(what, extra)
    kwargs: Dict[str, Any] = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2, "client_id": s.client_id,
                              "protocol": mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311}
    if s.manual_ack:
        kwargs["manual_ack"] = True
    client = mqtt.Client(**kwargs)
    if s.username:
        client.username_pw_set(s.username, s.password)
    if s.tls or s.ca_file or s.cert_file:
        check_tls(s.ca_file, s.cert_file, s.key_file, s.fields)
        # server verification always (CERT_REQUIRED + host name check); a client certificate for mutual TLS
        client.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file, cert_reqs=ssl.CERT_REQUIRED,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.reconnect_delay_set(min_delay=max(1, int(s.reconnect_min)), max_delay=max(1, int(s.reconnect_max)))
    return client


def check_tls(ca_file: Optional[str], cert_file: Optional[str], key_file: Optional[str],
              fields: Dict[str, str] = AGENT_FIELDS) -> None:
    """Load the CA and the client certificate/key now, so that a file that is not PEM (or a key that does not
    match its certificate) is a config error naming the option, not a TLS traceback at the first connect."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError("cannot use it as the CA certificate (%s): give a PEM file with the CA that signed "
                              "the broker's certificate" % _reason(exc), file=ca_file, field=fields["ca_file"])
    if cert_file:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError("cannot use the client certificate %s with the key %s (%s): give the PEM "
                              "certificate and its own private key" % (cert_file, key_file, _reason(exc)),
                              file=cert_file, field=fields["cert_file"])


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def read_password(file: Optional[str], env: Optional[str], fields: Dict[str, str] = AGENT_FIELDS,
                  max_bytes: int = 4096) -> Optional[str]:
    """The password in ``file`` (first line, newline removed) or in environment variable ``env``; None when
    neither is given. Errors name the option or config field, never the value."""
    if file:
        field = fields["password_file"]
        try:
            with open(file, "rb") as f:
                data = f.read(max_bytes + 1)
        except IsADirectoryError:
            raise ConfigError("is a directory; give the file that holds the password", file=file, field=field)
        except OSError as exc:
            raise ConfigError("cannot read the password file (%s)" % exc.strerror, file=file, field=field)
        if len(data) > max_bytes:
            raise ConfigError("is larger than %d bytes: not a password file" % max_bytes, file=file, field=field)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("is not UTF-8 text; write the password as one line of text", file=file, field=field)
        password = text.split("\n", 1)[0].strip("\r")
        if not password or "\x00" in password:
            raise ConfigError("holds no password on its first line" if not password else
                              "holds a NUL byte; write the password as one line of text", file=file, field=field)
        return password
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError("environment variable %s is not set" % env, field=fields["password_env"])
        return value
    return None
