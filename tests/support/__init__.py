"""Helpers shared by the fast tests and the integration tests (plain importable modules)."""
