"""Where the startup banner and log send a person: the web console's URL beside the key."""

from __future__ import annotations

from imagesynth.cli import _console_base, _first_key_banner


def test_the_console_url_is_the_public_url_or_the_listening_address() -> None:
    assert _console_base(None, "127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert _console_base(None, "0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert _console_base(None, "::", 8080) == "http://127.0.0.1:8080"
    assert _console_base(None, "::1", 8000) == "http://[::1]:8000"
    assert _console_base("https://images.example/", "0.0.0.0", 8000) == "https://images.example"


def test_the_first_key_banner_names_the_console_beside_the_key() -> None:
    banner = _first_key_banner("sk-abc", "http://127.0.0.1:8000")
    lines = banner.splitlines()
    key_line = next(i for i, line in enumerate(lines) if "sk-abc" in line)
    console = next(i for i, line in enumerate(lines) if "Web console" in line)
    assert 0 < console - key_line <= 2
    assert "open http://127.0.0.1:8000/ and paste the key above" in lines[console]
