"""A private directory of the test's own (``XDG_RUNTIME_DIR``), and no broker named."""

from __future__ import annotations

import pytest


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("MLIPX_SERVE_BROKER", raising=False)
    return tmp_path
