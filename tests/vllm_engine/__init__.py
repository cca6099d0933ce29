"""Tests of the vLLM engine (a package, so its conftest does not shadow tests/conftest.py)."""
