"""A small fake ``tensorrt`` module that records calls, to check the logic of code written against TensorRT's real
Python API (TensorRT cannot run on these machines). Install it with ``install(monkeypatch, version)``."""
import sys
import types

import numpy as np


class Recorder(object):
    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)


def make_module(version="10.3.0", parse_ok=True, build_ok=True, input_shape=(-1, 3, 32, 32), fp16=True,
                deserialize_ok=True, tensor_api=True, classes=10, calibrators=None):
    """``deserialize_ok``: bool, or a callable(data) -> bool deciding per engine file."""
    rec = Recorder()
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = rec.calls
    trt.memory = None  # set by FakeCuda: the engine reads and writes "device memory" through it

    class Logger(object):
        WARNING = 2

        def __init__(self, level):
            rec("Logger", level)

    class ILogger(object):
        class Severity(object):
            ERROR = 1
            WARNING = 2

        def __init__(self):
            pass

    class TensorIOMode(object):
        INPUT = "INPUT"
        OUTPUT = "OUTPUT"

    def nptype(dt):
        return np.float32

    class Engine(object):
        def __init__(self):
            self.names = ["image", "logits"]
            self.shapes = {"image": tuple(input_shape), "logits": (input_shape[0], classes)}

        def create_execution_context(self):
            return Context(self)

        def get_tensor_profile_shape(self, name, profile):
            return [(1,) + tuple(input_shape[1:]), (1,) + tuple(input_shape[1:]), (8,) + tuple(input_shape[1:])]

    class TensorEngine(Engine):
        @property
        def num_io_tensors(self):
            return 2

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "image" else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return self.shapes[name]

        def get_tensor_dtype(self, name):
            return "FLOAT"

    class BindingEngine(Engine):
        num_bindings = 2

        def get_binding_name(self, i):
            return self.names[i]

        def binding_is_input(self, i):
            return i == 0

        def get_binding_shape(self, i):
            return self.shapes[self.names[i]]

        def get_binding_dtype(self, i):
            return "FLOAT"

        def get_profile_shape(self, profile, name):
            return self.get_tensor_profile_shape(name, profile)

    class Context(object):
        def __init__(self, engine):
            self.engine = engine
            self.shape = None
            self.addresses = {}

        def set_input_shape(self, name, shape):
            rec("set_input_shape", name, tuple(shape))
            self.shape = tuple(shape)
            return True

        def set_binding_shape(self, index, shape):
            rec("set_binding_shape", index, tuple(shape))
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shape if name == "image" else (self.shape[0], classes)

        def get_binding_shape(self, index):
            return self.get_tensor_shape(self.engine.names[index])

        def set_tensor_address(self, name, ptr):
            rec("set_tensor_address", name, ptr)
            self.addresses[name] = ptr
            return True

        def _compute(self, inp_ptr, out_ptr):
            n = self.shape[0]
            x = trt.memory.read(inp_ptr, np.float32, int(np.prod(self.shape))).reshape(self.shape)
            means = x.reshape(n, -1).mean(axis=1)
            y = (means[:, None] + np.arange(classes, dtype=np.float32)[None, :]).astype(np.float32)
            trt.memory.write(out_ptr, y)

        def execute_async_v3(self, stream_handle):
            rec("execute_async_v3", stream_handle)
            self._compute(self.addresses["image"], self.addresses["logits"])
            return True

        def execute_async_v2(self, bindings, stream_handle):
            rec("execute_async_v2", len(bindings), stream_handle)
            self._compute(bindings[0], bindings[1])
            return True

    class Runtime(object):
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            ok = deserialize_ok(data) if callable(deserialize_ok) else deserialize_ok
            rec("deserialize_cuda_engine", len(data), ok)
            if not ok:
                if hasattr(self.logger, "log"):
                    self.logger.log(ILogger.Severity.ERROR, "Serialization assertion failed: version tag mismatch")
                return None
            return TensorEngine() if tensor_api else BindingEngine()

    class TimingCache(object):
        def serialize(self):
            return b"TIMING"

    class NetworkDefinitionCreationFlag(object):
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1

    class BuilderFlag(object):
        INT8 = "INT8"
        FP16 = "FP16"

    class MemoryPoolType(object):
        WORKSPACE = "WORKSPACE"

    class Input(object):
        name = "image"
        shape = input_shape

    class Network(object):
        def get_input(self, i):
            return Input()

    class Error(object):
        def __str__(self):
            return "In node 3 (parseGraph): INVALID_NODE: fake parser error"

    class OnnxParser(object):
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            rec("OnnxParser")

        def parse(self, data):
            rec("parse", len(data))
            return parse_ok

        def get_error(self, i):
            return Error()

    class Profile(object):
        def set_shape(self, name, mn, opt, mx):
            rec("set_shape", name, mn, opt, mx)

    class Config(object):
        int8_calibrator = None

        def create_timing_cache(self, data):
            rec("create_timing_cache", bytes(data))
            return TimingCache()

        def set_timing_cache(self, cache, ignore_mismatch):
            rec("set_timing_cache")

        def get_timing_cache(self):
            return TimingCache()

        def set_memory_pool_limit(self, pool, size):
            rec("set_memory_pool_limit", pool, size)

        def set_flag(self, flag):
            rec("set_flag", flag)

        def add_optimization_profile(self, profile):
            rec("add_optimization_profile")

    class Builder(object):
        platform_has_fast_fp16 = fp16

        def __init__(self, logger):
            rec("Builder")

        def create_network(self, flags):
            rec("create_network", flags)
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            rec("build_serialized_network")
            return b"FAKE-ENGINE" if build_ok else None

    if calibrators is not False:
        class IInt8EntropyCalibrator2(object):
            def __init__(self):
                pass

    for name, value in list(locals().items()):
        if isinstance(value, type):
            setattr(trt, name, value)
    trt.nptype = nptype
    return trt


class FakeCuda(object):
    """A CUDA adapter over host memory: "device pointers" index numpy buffers; records every call."""

    name = "fake"

    def __init__(self, trt=None):
        self.buffers = {}
        self.next_ptr = 0x1000
        self.calls = []
        self.pinned_count = 0
        if trt is not None:
            trt.memory = self

    def malloc(self, nbytes):
        ptr = self.next_ptr
        self.next_ptr += nbytes + 256
        self.buffers[ptr] = np.zeros(nbytes, np.uint8)
        self.calls.append(("malloc", nbytes))
        return ptr

    def free(self, ptr):
        self.calls.append(("free", ptr))
        del self.buffers[ptr]

    def pinned(self, shape, dtype):
        self.pinned_count += 1
        self.calls.append(("pinned", tuple(shape)))
        return np.zeros(shape, dtype)

    def free_pinned(self, arr):
        self.calls.append(("free_pinned",))

    def read(self, ptr, dtype, count):
        return self.buffers[ptr][:count * np.dtype(dtype).itemsize].view(dtype).copy()

    def write(self, ptr, arr):
        raw = np.ascontiguousarray(arr).view(np.uint8).ravel()
        self.buffers[ptr][:raw.size] = raw

    def htod(self, dst, src, stream):
        self.calls.append(("htod", dst))
        self.write(dst, src)

    def dtoh(self, dst, src, stream):
        self.calls.append(("dtoh", src))
        dst[...] = self.read(src, dst.dtype, dst.size).reshape(dst.shape)

    def stream(self):
        return "stream-1"

    def stream_handle(self, stream):
        return 42

    def synchronize(self, stream):
        self.calls.append(("synchronize",))

    def destroy_stream(self, stream):
        self.calls.append(("destroy_stream",))


def install(monkeypatch, **kwargs):
    trt = make_module(**kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt
