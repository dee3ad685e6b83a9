"""A small fake ``tensorrt`` module that records calls, to check the logic of code written against TensorRT's real
Python API (TensorRT cannot run on these machines). Install it with ``install(monkeypatch, version)``."""
import sys
import types


class Recorder(object):
    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)


def make_module(version="10.3.0", parse_ok=True, build_ok=True, input_shape=(-1, 3, 32, 32), fp16=True):
    rec = Recorder()
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = rec.calls

    class Logger(object):
        WARNING = 2

        def __init__(self, level):
            rec("Logger", level)

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

    for name, value in list(locals().items()):
        if isinstance(value, type):
            setattr(trt, name, value)
    return trt


def install(monkeypatch, **kwargs):
    trt = make_module(**kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt
