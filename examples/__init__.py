"""Example apps built on sse_notify; run them from the repository root (see each one's README)."""
