"""Elastic layers, the supernet, static subnets and exact extraction."""

from ofa_search.nn.extract import extract
from ofa_search.nn.static import StaticSubnet, build_static
from ofa_search.nn.supernet import Supernet

__all__ = ["StaticSubnet", "Supernet", "build_static", "extract"]
