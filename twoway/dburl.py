"""Database URLs as users write them: the driver a bare scheme stands for, and a driver
that is not installed named with the extra that installs it.

``postgresql://`` (and ``postgres://``) means psycopg 3, ``mysql://`` and ``mariadb://``
mean PyMySQL: the drivers the ``postgres`` and ``mysql`` extras ship. A URL that names
its driver (``postgresql+psycopg2://``) keeps it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from twoway.errors import DefinitionError

#: a scheme without a driver -> the SQLAlchemy name with the driver twoway installs for it
BARE_SCHEMES = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
#: driver -> the twoway extra that installs it
EXTRAS = {"psycopg": "postgres", "psycopg2": "postgres", "pymysql": "mysql"}


class DriverMissing(DefinitionError):
    """A database URL's driver is not installed (the message says which extra has it)."""


def database_url(url: str | sa.URL) -> sa.URL:
    """``url`` parsed, a bare scheme given the driver twoway installs for it."""
    parsed = make_url(url)
    drivername = BARE_SCHEMES.get(parsed.drivername)
    return parsed.set(drivername=drivername) if drivername else parsed


def driver_problem(url: sa.URL) -> str | None:
    """Why the driver of ``url`` (a known database kind) cannot be loaded, or None."""
    try:
        url.get_dialect().import_dbapi()
    except ImportError:
        driver = url.get_driver_name()
        extra = EXTRAS.get(driver)
        install = f"pip install 'twoway[{extra}]'" if extra else f"install the {driver} package"
        scheme = url.drivername.split("+")[0]
        return f"the {driver} driver for {scheme} URLs is not installed ({install})"
    return None


def create_engine(url: str | sa.URL, **kwargs: Any) -> sa.Engine:
    """An engine for ``url`` as a user wrote it; :class:`DriverMissing` if its driver is not
    installed."""
    parsed = database_url(url)
    problem = driver_problem(parsed)
    if problem:
        raise DriverMissing(problem)
    return sa.create_engine(parsed, **kwargs)
