"""The Prefect flows of twoway: what deployments point at."""
