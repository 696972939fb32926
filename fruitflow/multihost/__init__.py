"""A multi-host Spark cluster on one machine (network namespaces): `make cluster-demo` and its tests."""
