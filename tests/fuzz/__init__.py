"""Fuzz tests: hypothesis-generated input for the session core, the codec, the proxy and the
provision server (item 5 of issue 5). ``scripts/fuzz_atheris.py`` runs the long version."""
