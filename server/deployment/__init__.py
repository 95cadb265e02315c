"""Old home of the loopback deployment, now the top-level `deployment/` package; these modules
keep `python -m server.deployment.certificates` and `python -m server.deployment.local` working."""
