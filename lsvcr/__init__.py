"""LSVCR: LLM-enhanced sequential recommender for joint video and comment recommendation."""

__version__ = "0.1.0"
