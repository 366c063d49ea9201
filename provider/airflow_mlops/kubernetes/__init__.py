"""Kubernetes manifests rendered by the provider (pure functions: no API calls, no ``kubernetes`` import)."""
