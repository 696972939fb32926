"""A multi-host Spark cluster on one machine (network namespaces): `make multihost-demo` and its tests."""
