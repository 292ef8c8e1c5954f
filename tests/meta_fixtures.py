"""Fixtures for the metadata store: a private redis-server and each backend."""
