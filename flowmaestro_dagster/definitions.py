"""The Dagster code location: example workflows as jobs. The only place that wires Dagster."""

import dagster as dg

from flowmaestro_dagster.adapter import INPUTS_RESOURCE, SERVICES_RESOURCE
from flowmaestro_dagster.catalog import load_catalog
from flowmaestro_dagster.resources import FlowMaestroResource, workflow_inputs_resource
from flowmaestro_dagster.settings import get_settings


def build_definitions() -> dg.Definitions:
    settings = get_settings()
    resources = {
        INPUTS_RESOURCE: workflow_inputs_resource,
        SERVICES_RESOURCE: FlowMaestroResource(),
    }
    catalog = load_catalog(settings.workflows_dir, resource_defs=resources)
    jobs = [entry.compiled.job for entry in catalog if entry.compiled is not None]
    return dg.Definitions(jobs=jobs)


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
