"""The Ray Tune driver: the trainable, the files Tune writes, progress, results and summary.

Imported by ``python -m tuner.run`` and ``python -m tuner.browse``; the browser reads Tune's
files without importing Ray.
"""
