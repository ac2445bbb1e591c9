"""The test harness's own rule: a missing program skips on a laptop and fails in CI."""

from __future__ import annotations

import pytest

from .support import require_binary


def test_missing_binary_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SSE_NOTIFY_REQUIRE_ALL a missing program skips the test, with the reason."""
    monkeypatch.delenv("SSE_NOTIFY_REQUIRE_ALL", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-program-xyz is not installed: because"):
        require_binary("no-such-program-xyz", "because")


def test_missing_binary_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    """With SSE_NOTIFY_REQUIRE_ALL=1 (as in .ci/run) a missing program fails the test."""
    monkeypatch.setenv("SSE_NOTIFY_REQUIRE_ALL", "1")
    with pytest.raises(pytest.fail.Exception, match="turns this skip into a failure"):
        require_binary("no-such-program-xyz", "because")


def test_present_binary_is_found() -> None:
    """A program on PATH is returned as its path."""
    assert require_binary("sh", "always there").endswith("/sh")


def test_ci_requires_everything() -> None:
    """.ci/run sets SSE_NOTIFY_REQUIRE_ALL=1 and runs the README's test command."""
    from .support import ROOT

    ci = (ROOT / ".ci" / "run").read_text()
    assert "export SSE_NOTIFY_REQUIRE_ALL=1" in ci
    assert "\nmake test\n" in ci
    assert "make test" in (ROOT / "README.md").read_text()
