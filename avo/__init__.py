"""avo: evolve CuTe DSL attention kernels; use the best one as `avo.attention`.

`import avo` stays cheap: `attention`, `attention_varlen` and `load` (avo.ops, which imports torch)
load on first use.
"""

__all__ = ["attention", "attention_varlen", "load"]


def __getattr__(name):
    if name in __all__:
        from avo import ops

        return getattr(ops, name)
    raise AttributeError(f"module 'avo' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
