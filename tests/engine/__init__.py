"""Contract tests of the state engines (embedded and Redis)."""
