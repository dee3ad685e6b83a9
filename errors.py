"""The one exception tree of edgesight.

Every error a user can cause (bad config, bad model file, bad package, bad image, missing optional package) is an
:class:`EdgesightError`. Its message says what is wrong, names the file and/or field, and says what to do. The CLI
prints such errors as one paragraph without a traceback and exits with :attr:`EdgesightError.exit_code`.
"""
from typing import Any, Callable, Dict, Optional, Sequence, Tuple


class EdgesightError(Exception):
    """Base class. ``str(err)`` is the complete, user-facing message."""

    exit_code = 1

    def __init__(self, message: str, *, file: Optional[str] = None, field: Optional[str] = None,
                 hint: Optional[str] = None) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.field = field
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.field:
            where.append("field '%s'" % self.field)
        text = ("%s: %s" % (", ".join(where), self.message)) if where else self.message
        if self.hint:
            text += " " + self.hint
        return text


class ConfigError(EdgesightError):
    """A configuration file or option is invalid."""

    exit_code = 2


class PackageError(EdgesightError):
    """A model package (``edgesight.yaml`` + files) is missing, malformed or inconsistent."""

    exit_code = 3


class ModelFileError(EdgesightError):
    """A model file (ONNX, TFLite, engine) cannot be read or is not what it claims to be."""

    exit_code = 3


class ImageError(EdgesightError):
    """An image cannot be read or has an unusable shape."""

    exit_code = 4


class MissingDependencyError(EdgesightError):
    """An optional package is not installed; the message names the extra that installs it."""

    exit_code = 5

    def __init__(self, what: str, extra: str, *, module: Optional[str] = None, detail: Optional[str] = None) -> None:
        self.extra = extra
        self.module = module
        msg = "%s needs %s, which is not installed." % (what, module or extra)
        if detail:
            msg += " (%s)" % detail
        super().__init__(msg, hint="Install it with: pip install 'edgesight[%s]'" % extra)


class RuntimeStateError(EdgesightError):
    """A runtime was used in the wrong state (infer before load, after close) or with a bad input."""

    exit_code = 6


class InferenceError(EdgesightError):
    """The inference engine itself failed."""

    exit_code = 6


class ConversionError(EdgesightError):
    """A conversion step failed (a tool refused the model, a produced file broke a rule, a toolchain is missing)."""

    exit_code = 7


class RolloutError(EdgesightError):
    """A model rollout was refused or failed (a bad signature, pack or download; a device rejected the candidate or
    rolled it back): ``edgesight deploy`` exits with it; the agent reports it on ``model/state`` and runs on."""

    exit_code = 10


class BrokerError(EdgesightError):
    """The MQTT broker cannot be reached (``edgesight collect``; the agent itself retries instead)."""

    exit_code = 9


# -- formatting helpers shared by every YAML reader (package manifest, agent config, preprocessing spec) ----------
def field_path(loc: Sequence[Any]) -> str:
    """pydantic's error location as the YAML field a user sees: ``artifacts[1].sha256`` (aliases like ``schema_``
    lose their trailing underscore)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += "[%d]" % part
        else:
            out += ("." if out else "") + str(part).rstrip("_")
    return out


def yaml_problem(exc: Exception) -> str:
    """``YAML syntax error at line L, column C: <problem>`` for a yaml.YAMLError."""
    mark = getattr(exc, "problem_mark", None)
    where = " at line %d, column %d" % (mark.line + 1, mark.column + 1) if mark is not None else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["?"])[0]
    return "YAML syntax error%s: %s" % (where, problem)


def validation_problems(errors: Sequence[Dict[str, Any]], line_of: Optional[Callable[[Tuple[Any, ...]],
                                                                                     Optional[int]]] = None,
                        limit: int = 5) -> Tuple[str, Optional[str]]:
    """pydantic ``exc.errors()`` as one line ("field (line N): what; ...") and the first field's path."""
    msgs = []
    for e in errors[:limit]:
        loc = tuple(e["loc"])
        what = {"missing": "missing (required)",
                "extra_forbidden": "unknown field (not allowed; check the spelling)"}.get(e["type"], e["msg"])
        line = line_of(loc) if line_of else None
        msg = "%s%s: %s" % (field_path(loc) or "(top level)", " (line %d)" % line if line else "", what)
        if msg not in msgs:  # a union of config classes reports one bad field once per member
            msgs.append(msg)
    more = " (and %d more)" % (len(errors) - limit) if len(errors) > limit else ""
    return "; ".join(msgs) + more, (field_path(errors[0]["loc"]) or None) if errors else None


def require_module(module: str, what: str, extra: str, package: Optional[str] = None, hint: str = "") -> Any:
    """Import an optional package, or raise :class:`MissingDependencyError` naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(what, extra, module=package or module,
                                     detail="%s%s" % (exc, "; " + hint if hint else ""))
