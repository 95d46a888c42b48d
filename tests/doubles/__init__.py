"""Test doubles for servers that cannot run here, named as such."""
