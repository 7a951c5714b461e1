"""capscale: forecast downstream accuracy of language models from a ladder of small runs."""

__version__ = "0.1.0"

# Imported on first use, so `import capscale` stays light (no torch): name -> "module:attribute".
_LAZY = {"score": "capscale.inloop:score"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, _, attribute = _LAZY[name].partition(":")
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'capscale' has no attribute {name!r}")
