"""Entrypoints: HTTP API and dashboard, CLI, worker loop. They reach the rest via bootstrap."""
