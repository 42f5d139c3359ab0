"""The one thing pyproject.toml cannot say: the repository's top-level ``conf/`` is installed as the
package ``lsvcr.conf`` (Hydra's primary config, ``pkg://lsvcr.conf`` in ``lsvcr/main.py``), in editable
and in wheel installs alike; everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["lsvcr", "lsvcr.*"]), "lsvcr.conf"],
    package_dir={"lsvcr.conf": "conf"},
    package_data={"lsvcr.conf": ["*.yaml", "**/*.yaml"]},
)
