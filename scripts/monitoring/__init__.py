"""The service's Prometheus rules and Grafana dashboard, as code: `python -m
scripts.monitoring_files` writes them under deploy/ (and `--check` says whether they are up to
date)."""
