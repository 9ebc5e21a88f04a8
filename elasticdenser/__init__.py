"""ElasticDenser: dense retrieval with an elastic query encoder.

The public API is deliberately small; everything else lives in submodules.
"""
__version__ = "0.1.0"

from elasticdenser.operating_point import ElasticSpace, InvalidOperatingPoint, OperatingPoint, parse_points

__all__ = ["__version__", "OperatingPoint", "ElasticSpace", "InvalidOperatingPoint", "parse_points"]
