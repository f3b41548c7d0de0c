"""Grafana dashboards (as code) and provisioning files for the gateway's Prometheus metrics."""
