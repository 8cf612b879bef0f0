"""The steps of a sync run, one module each: plain functions plus their Prefect task wrappers."""
