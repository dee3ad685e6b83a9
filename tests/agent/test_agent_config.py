"""The agent config: defaults and errors that name the field and its line."""
import pytest

from edgesight.agent.config import load_config
from edgesight.errors import ConfigError

from support import EXAMPLE_PACKAGE


# -- config ----------------------------------------------------------------------------------------------------
def write(tmp_path, text):
    p = tmp_path / "agent.yaml"
    p.write_text(text)
    return str(p)


GOOD = """package: %s
cameras:
  - name: front
    source: {type: folder, path: /tmp}
""" % EXAMPLE_PACKAGE


def test_config_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.mqtt.protocol == "5" and cfg.mqtt.port == 1883 and cfg.runtime == "auto"
    assert cfg.cameras[0].source.fps == 10.0 and cfg.outbox.max_attempts == 5


@pytest.mark.parametrize("text,field,line,needle", [
    (GOOD + "mqtt:\n  hots: x\n", "mqtt.hots", 6, "unknown field"),
    (GOOD + "mqtt:\n  port: many\n", "mqtt.port", 6, "integer"),
    (GOOD.replace("type: folder, path: /tmp", "type: url, url: camera.local"), "cameras[0].source", 4, "rtsp://"),
    (GOOD + "mqtt:\n  protocol: 4\n", "mqtt.protocol", 6, "5 or 3.1.1"),
    ("cameras: []\n", "package", None, "missing"),
    (GOOD + "mqtt:\n  tls: {ca_file: /no/such/ca.pem}\n", "mqtt.tls.ca_file", None, "no such file"),
])
def test_config_errors_name_field_and_line(tmp_path, text, field, line, needle):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    msg = str(err.value)
    assert err.value.field == field and needle in msg, msg
    if line:
        assert "(line %d)" % line in msg, msg


def test_config_yaml_syntax_error(tmp_path):
    with pytest.raises(ConfigError, match="YAML syntax error at line"):
        load_config(write(tmp_path, "package: [x\n"))
