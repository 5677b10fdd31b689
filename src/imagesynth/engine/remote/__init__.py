"""Engines that hand generation to another server (docs/remote-engines.md)."""
