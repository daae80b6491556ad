"""Prometheus metrics: a small registry (registry.py), the agent's own metrics (kubelet.py)
and the resource metrics metrics-server scrapes (resource.py)."""
