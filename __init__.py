"""edgesight: put an image classifier onto a fleet of Jetson and Raspberry Pi cameras, and learn from what they see.

The repository root is this package; its folders are the sub-packages ``edgesight.runtimes``,
``edgesight.calibration``, ``edgesight.converters``, ``edgesight.agent`` and ``edgesight.fleet``.
"""
try:  # Python 3.8 has importlib.metadata
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("edgesight")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"

from .errors import EdgesightError  # noqa: E402

__all__ = ["EdgesightError", "__version__"]
