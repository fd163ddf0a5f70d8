"""jaxgen's tests (a package, so that `tests.helpers` is imported from this tree)."""
