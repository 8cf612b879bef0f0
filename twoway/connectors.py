"""Which endpoint block serves which ``kind`` of system, and opening one from a definition."""

from __future__ import annotations

import importlib

from twoway.contract import Endpoint
from twoway.dburl import DriverMissing
from twoway.definition import Definition

ENDPOINT_CLASSES = {
    "sql": "blocks.sql:SqlTable",
    "sharepoint": "blocks.sharepoint:SharePointList",
    "salesforce": "blocks.salesforce:SalesforceObject",
    "rest": "blocks.rest:RestCollection",
    "directus": "blocks.directus:DirectusCollection",
}


def endpoint_class(kind: str) -> type:
    """The block class for a kind of system."""
    module, _, name = ENDPOINT_CLASSES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def open_endpoint(definition: Definition, system: str) -> Endpoint:
    """Build the endpoint of one system of a definition (no I/O until it is used, beyond
    loading the saved block it names).

    The database URL is known only here when a saved block holds it: a driver that is not
    installed is refused now, as :class:`~twoway.dburl.DriverMissing` naming the system and
    the extra that installs it, rather than on first use.
    """
    spec = definition.systems[system]
    columns = sorted(set(definition.fields_of(system).values()))
    endpoint = endpoint_class(spec.kind).from_definition(system, spec, columns)
    check = getattr(endpoint, "driver_problem", None)
    problem = check() if check is not None else None
    if problem:
        raise DriverMissing(f"{definition.path}: systems.{system}: {problem}")
    return endpoint
