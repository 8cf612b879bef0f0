"""Protocol-faithful simulators of the SaaS systems twoway syncs, served over HTTP on 127.0.0.1."""
