"""FaST-GShare (Python): spatio-temporal GPU sharing for OpenFaaS.

This package holds the command line and the vocabulary every other part shares: the resource
model and label parsing (``resources``), Redis key names (``keys``) and errors (``errors``).
It must not import flask, redis, kubernetes or torch at module level.
"""

__version__ = "0.1.0"
