# Makes the config tree importable as the package `lsvcr.conf` (see setup.py), where Hydra finds it
# in editable and wheel installs alike. Only YAML lives here.
