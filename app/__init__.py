"""Authenticated WebSocket hub between agents and dashboards."""
