"""Prefect blocks of twoway: integration-account credentials and one endpoint block per system kind."""
