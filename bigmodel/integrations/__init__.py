"""Integrations with other libraries; each is imported on demand (bigmodel does not depend on them)."""
