"""Mojo kernels of the max backend, registered as MAX graph custom ops (see half_panels.mojo)."""
