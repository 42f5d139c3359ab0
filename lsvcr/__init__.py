"""LSVCR: LLM-enhanced sequential recommender for joint video and comment recommendation."""

__version__ = "0.1.0"

from lsvcr.utils.resolvers import register as _register_resolvers

_register_resolvers()
