"""Integration tests: real proxy processes, driven through the public API."""
