"""Home Assistant's templates rendered as Home Assistant renders them: Jinja2's immutable sandbox, ``value_json``
the decoded payload."""
import json


def render(template, payload):
    import jinja2.sandbox  # the test extra: a missing one fails here, it does not skip

    value_json = json.loads(payload) if isinstance(payload, (str, bytes)) else payload
    return jinja2.sandbox.ImmutableSandboxedEnvironment().from_string(template).render(value_json=value_json).strip()
