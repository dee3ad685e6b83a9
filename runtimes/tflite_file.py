"""Reading a ``.tflite`` flatbuffer before an interpreter does (TFLite schema: Model, SubGraph, Tensor, Operator,
Buffer, OperatorCode).

tflite-runtime 2.14 (the last build for Python 3.8, JetPack 5) does not verify the flatbuffer: a truncated or
damaged file makes it read past the end and the process dies of SIGSEGV, which under systemd is a crash loop. So
every offset, vector and string the interpreter will follow is bounds-checked here first, and a bad file is a
:class:`ModelFileError`. The same reader lists the operator codes (the converter refuses Select-TF ``Flex*`` ops).
"""
import struct
from typing import List, Optional

from ..errors import ModelFileError

MAX_VECTOR = 1 << 26


class _Bad(Exception):
    pass


class FlatFile(object):
    """Bounds-checked access to one flatbuffer in memory."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def _need(self, pos: int, size: int) -> None:
        if pos < 0 or size < 0 or pos + size > len(self.buf):
            raise _Bad("offset %d (+%d) is outside the file (%d bytes)" % (pos, size, len(self.buf)))

    def u32(self, pos: int) -> int:
        self._need(pos, 4)
        return struct.unpack_from("<I", self.buf, pos)[0]

    def i32(self, pos: int) -> int:
        self._need(pos, 4)
        return struct.unpack_from("<i", self.buf, pos)[0]

    def u64(self, pos: int) -> int:
        self._need(pos, 8)
        return struct.unpack_from("<Q", self.buf, pos)[0]

    def table(self, pos: int) -> int:
        """Check the table at ``pos`` and its vtable; returns ``pos``."""
        vtable = pos - self.i32(pos)
        self._need(vtable, 4)
        vsize, tsize = struct.unpack_from("<HH", self.buf, vtable)
        if vsize < 4 or vsize % 2:
            raise _Bad("a vtable of %d bytes" % vsize)
        self._need(vtable, vsize)
        self._need(pos, tsize)
        return pos

    def field(self, table: int, index: int) -> Optional[int]:
        """Where field ``index`` of ``table`` is stored, or None when absent."""
        vtable = table - self.i32(table)
        vsize = struct.unpack_from("<H", self.buf, vtable)[0]
        if 4 + 2 * index >= vsize:
            return None
        off = struct.unpack_from("<H", self.buf, vtable + 4 + 2 * index)[0]
        if not off:
            return None
        self._need(table + off, 1)
        return table + off

    def ref(self, pos: int) -> int:
        """Follow the uoffset stored at ``pos``."""
        return pos + self.u32(pos)

    def vector(self, table: int, index: int, elem: int) -> List[int]:
        """Positions of the elements of the vector in field ``index`` (empty when absent)."""
        at = self.field(table, index)
        if at is None:
            return []
        vec = self.ref(at)
        n = self.u32(vec)
        if n > MAX_VECTOR:
            raise _Bad("a vector of %d elements" % n)
        self._need(vec + 4, n * elem)
        return [vec + 4 + i * elem for i in range(n)]

    def tables(self, table: int, index: int) -> List[int]:
        return [self.table(self.ref(p)) for p in self.vector(table, index, 4)]

    def string(self, table: int, index: int) -> Optional[str]:
        at = self.field(table, index)
        if at is None:
            return None
        s = self.ref(at)
        n = self.u32(s)
        self._need(s + 4, n)
        return self.buf[s + 4:s + 4 + n].decode("utf-8", "replace")


def _check_model(f: FlatFile) -> List[str]:
    model = f.table(f.u32(0))
    codes = f.tables(model, 1)
    custom = [name for name in (f.string(c, 1) for c in codes) if name]  # builtin op codes have no custom_code
    buffers = f.tables(model, 4)
    for b in buffers:
        f.vector(b, 0, 1)  # data
        off, size = f.field(b, 1), f.field(b, 2)
        if off is not None and size is not None and f.u64(off) > 1 and f.u64(off) + f.u64(size) > len(f.buf):
            raise _Bad("a buffer stored past the end of the file")
    for sub in f.tables(model, 2):
        tensors = f.tables(sub, 0)
        for t in tensors:
            f.vector(t, 0, 4)  # shape
            buf = f.field(t, 2)
            if buf is not None and f.u32(buf) >= max(1, len(buffers)):
                raise _Bad("a tensor names buffer %d of %d" % (f.u32(buf), len(buffers)))
            f.string(t, 3)
            q = f.field(t, 4)
            if q is not None:
                qt = f.table(f.ref(q))
                for i, size in ((0, 4), (1, 4), (2, 4), (3, 8)):  # min, max, scale, zero_point
                    f.vector(qt, i, size)
        for i in (1, 2):  # inputs, outputs
            _indices(f, sub, i, len(tensors))
        for op in f.tables(sub, 3):
            code = f.field(op, 0)
            if code is not None and f.u32(code) >= max(1, len(codes)):
                raise _Bad("an operator with code %d of %d" % (f.u32(code), len(codes)))
            for i in (1, 2):
                _indices(f, op, i, len(tensors))
    return custom


def _indices(f: FlatFile, table: int, index: int, count: int) -> None:
    for p in f.vector(table, index, 4):
        i = f.i32(p)
        if i < -1 or i >= count:
            raise _Bad("tensor index %d of %d" % (i, count))


def check(path: str) -> List[str]:
    """Verify the .tflite at ``path`` (identifier, and every offset the interpreter follows); returns the custom
    operator codes (``Flex*`` for Select-TF ops). ModelFileError naming what is wrong otherwise."""
    try:
        with open(path, "rb") as fh:
            buf = fh.read()
    except OSError as exc:
        raise ModelFileError("cannot read the model (%s)" % (exc.strerror or exc), file=path)
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ModelFileError("not a TFLite model (no 'TFL3' flatbuffer identifier). Convert the model with "
                             "`edgesight convert` or check that the file was copied completely.", file=path)
    try:
        return _check_model(FlatFile(buf))
    except (_Bad, struct.error) as exc:
        raise ModelFileError("the TFLite flatbuffer is damaged or truncated (%s); re-copy the package or convert "
                             "the model again" % exc, file=path)
