"""srcluster: traiNNer-redux style super-resolution training at cluster scale."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("srcluster")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
