"""Importing this module parses the connector catalogue (nodes/connectors/catalog/*.yaml) and
builds the connector registry (built-ins plus installed entry points).

The run launcher's forkserver preloads it (engines/launcher.py, DEFAULT_PRELOAD), so every run
worker forks with both ready instead of spending ~0.3-1 s on the catalogue and ~25 ms on the
registry when its job is compiled and validated.
"""

from flowmaestro_dagster.nodes.connectors import default_registry
from flowmaestro_dagster.nodes.connectors.declarative import catalogue

CATALOGUE = catalogue()
REGISTRY = default_registry()
