"""End-to-end demonstrations run by `edgecloud demo ...`."""
