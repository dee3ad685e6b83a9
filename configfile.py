"""The one YAML loader for the files people write: ``agent.yaml``, ``edgesight.yaml`` and preprocessing specs.

What it guarantees, whatever the bytes in the file:

- the size is bounded, and the text must be UTF-8 (a non-UTF-8 byte or binary garbage is one clear error naming
  the line, never a traceback);
- a key given twice in one mapping is an error (YAML says keys are unique; PyYAML silently keeps the last);
- anchors and aliases are refused (a 1 KB "billion laughs" alias bomb expands to gigabytes) and nesting depth is
  bounded (deep nesting would overflow the parser's recursion);
- validation errors (pydantic) name the field as the YAML spells it and its line.

Every error is raised as the caller's own :class:`EdgesightError` subclass (``ConfigError`` for configs,
``PackageError`` for a package manifest). Device-side: Python 3.8-compatible.
"""
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Type

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError, EdgesightError, field_path, validation_problems, yaml_problem

MAX_BYTES = 1 << 20  # 1 MiB: a config or manifest is a few KB
MAX_DEPTH = 32


class _Refused(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any, loc: Sequence[Any] = ()) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark
        self.loc = tuple(loc)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases, without duplicate keys and with a depth bound."""

    max_depth = MAX_DEPTH

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: List[Any] = []  # keys and indices from the root to the node being composed

    def compose_node(self, parent: Any, index: Any) -> Any:
        if parent is not None:
            self._path.append(index.value if isinstance(index, yaml.ScalarNode) else index)
        try:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                raise _Refused("YAML aliases (*%s) are not allowed here: write the value out" % event.anchor,
                               event.start_mark, self._path)
            if getattr(event, "anchor", None):
                raise _Refused("YAML anchors (&%s) are not allowed here: write the value out" % event.anchor,
                               event.start_mark, self._path)
            if len(self._path) >= self.max_depth:
                raise _Refused("nested deeper than %d levels" % self.max_depth, event.start_mark, self._path)
            return super().compose_node(parent, index)
        finally:
            if parent is not None:
                self._path.pop()

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: Dict[Tuple[str, str], int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                ident = (key.tag, key.value)
                if ident in seen:
                    raise _Refused("duplicate key %r (first given at line %d); give each key once"
                                   % (key.value, seen[ident]), key.start_mark, self._path + [key.value])
                seen[ident] = key.start_mark.line + 1
        return node


class Document(NamedTuple):
    """A parsed YAML file: its data and the node tree that knows each value's line."""

    path: str
    data: Any
    root: Optional[yaml.Node]

    def line_of(self, loc: Sequence[Any]) -> Optional[int]:
        """1-based line of the value at ``loc`` (keys and list indices), or of its deepest existing parent."""
        node, line = self.root, (self.root.start_mark.line + 1 if self.root is not None else None)
        for part in loc:
            nxt = None
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                for k, v in node.value:
                    if getattr(k, "value", None) == part:
                        nxt, line = v, k.start_mark.line + 1
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                nxt = node.value[part]
                line = nxt.start_mark.line + 1
            if nxt is None:
                break
            node = nxt
        return line


def read_text(path: str, what: str, error: Type[EdgesightError] = ConfigError, max_bytes: int = MAX_BYTES,
              field: Optional[str] = None) -> str:
    """The UTF-8 text of ``path`` (at most ``max_bytes``), or ``error`` naming the file (and the option or field
    that named it) and saying what is wrong."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except IsADirectoryError:
        raise error("is a directory; give the %s file" % what, file=path, field=field)
    except OSError as exc:
        raise error("cannot read the %s (%s)" % (what, exc.strerror or exc), file=path, field=field)
    return decode_text(data, path, what, error, max_bytes, field)


def decode_text(data: bytes, path: str, what: str, error: Type[EdgesightError] = ConfigError,
                max_bytes: int = MAX_BYTES, field: Optional[str] = None) -> str:
    if len(data) > max_bytes:
        raise error("is larger than %d bytes: that is not a %s" % (max_bytes, what), file=path, field=field)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise error("is not UTF-8 text (byte 0x%02x at line %d): is it really %s %s? Save it as UTF-8."
                    % (data[exc.start], line, "an" if what[:1] in "aeiou" else "a", what), file=path, field=field)
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise error("holds a NUL byte at line %d: binary data, not a %s" % (line, what), file=path, field=field)
    return text[1:] if text.startswith("\ufeff") else text


def parse(text: str, path: str, error: Type[EdgesightError] = ConfigError) -> Document:
    """Parse YAML text with the rules of this module."""
    loader = None
    try:
        loader = _Loader(text)  # its reader refuses control characters right here
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except _Refused as exc:
        mark = exc.problem_mark
        raise error("%s (line %d, column %d)" % (exc.problem, mark.line + 1, mark.column + 1), file=path,
                    field=field_path(exc.loc) or None)
    except yaml.reader.ReaderError as exc:
        raise error("holds a control character (0x%02x) at line %d: binary data, not YAML text"
                    % (exc.character, text[:exc.position].count("\n") + 1), file=path)
    except yaml.YAMLError as exc:
        raise error(yaml_problem(exc), file=path)
    except RecursionError:
        raise error("YAML nested too deeply to read", file=path)
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a timestamp or !!binary value that cannot be
        raise error("YAML value cannot be read: %s" % exc, file=path)  # constructed
    finally:
        if loader is not None:
            loader.dispose()
    return Document(path, data, root)


def load(path: str, what: str, error: Type[EdgesightError] = ConfigError, max_bytes: int = MAX_BYTES,
         expect: str = "") -> Document:
    """Read and parse ``path``; with ``expect`` (what its keys are), anything but a mapping is an error."""
    doc = parse(read_text(path, what, error, max_bytes), path, error)
    if expect and not isinstance(doc.data, dict):
        raise error("expected a YAML mapping of %s, got %s" % (expect, _kind(doc.data)), file=path)
    return doc


def _kind(data: Any) -> str:
    return "an empty file" if data is None else "a %s" % type(data).__name__


LocFixer = Callable[[List[Dict[str, Any]]], List[Dict[str, Any]]]


def validate(model: Type[BaseModel], doc: Document, error: Type[EdgesightError] = ConfigError, what: str = "",
             hint: str = "", fix_locs: Optional[LocFixer] = None, data: Any = None) -> Any:
    """``model`` built from the document's data (or ``data``); a ValidationError becomes ``error`` naming the
    first field as YAML spells it and the line of every field listed."""
    try:
        return model.model_validate(doc.data if data is None else data)
    except ValidationError as exc:
        errors = exc.errors()
        if fix_locs is not None:
            errors = fix_locs(errors)
        problems, field = validation_problems(errors, doc.line_of)
        raise error("invalid %s: %s.%s" % (what or "file", problems, " " + hint if hint else ""), file=doc.path,
                    field=field)


def problem_at(doc: Document, loc: Sequence[Any], message: str, error: Type[EdgesightError] = ConfigError) -> Any:
    """An ``error`` about the value at ``loc``, naming its field and line (for checks made after validation)."""
    line = doc.line_of(loc)
    return error("%s%s" % (message, " (line %d)" % line if line else ""), file=doc.path, field=field_path(loc))
