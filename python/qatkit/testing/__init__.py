"""Test support shipped with qatkit (as ``torch.testing`` is with torch): slow float64 references of
the ops (:mod:`.reference`), a sample-input factory with odd layouts, dtypes and qparams
(:mod:`.samples`), and the property-based fuzz checks of every op (:mod:`.fuzz`), used by the test
suite and by ``scripts/fuzz_ops.py``."""
