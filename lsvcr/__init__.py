"""LSVCR: LLM-enhanced sequential recommender for joint video and comment recommendation."""

from lsvcr.version import __version__  # noqa: F401  (the package root is the public facade)

from lsvcr.utils.resolvers import register as _register_resolvers

_register_resolvers()


def load_artifact(path, verify: bool = True):
    """Open an exported artifact (``stage=export``): :func:`lsvcr.deploy.artifact.load_artifact`."""
    from lsvcr.deploy.artifact import load_artifact as _load

    return _load(path, verify=verify)
