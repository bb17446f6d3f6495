"""Integrations with other libraries; each is imported on first use (bigmodel does not depend on them):
`bigmodel.integrations.transformers.register()` imports Hugging Face transformers only then."""
_INTEGRATIONS = ("transformers",)


def __getattr__(name):
    if name in _INTEGRATIONS:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_INTEGRATIONS))
