"""Importing this module parses the connector catalogue (nodes/connectors/catalog/*.yaml).

The run launcher's forkserver preloads it (engines/launcher.py, DEFAULT_PRELOAD), so every run
worker forks with the catalogue already parsed instead of spending ~0.3-1 s on it when its job
is compiled and validated.
"""

from flowmaestro_dagster.nodes.connectors.declarative import catalogue

CATALOGUE = catalogue()
