"""The OpenFaaS provider: the faas-provider HTTP contract over a pluggable ``Backend``."""
