"""XLA's temporary bytes per device of the jitted calls one step of a trainer makes (for the
mesh scripts: activations split over the devices keep them near 1/N of one device's)."""
import jax


def _abstract(tree):
    """Shapes, dtypes and (committed) shardings of a call's arguments, to compile it again."""
    def one(x):
        if not hasattr(x, "sharding"):
            return x
        return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                    sharding=x.sharding if x.committed else None)
    return jax.tree.map(one, tree)


def temporaries_mib(names, run_once) -> dict:
    """Run `run_once()` with each jitted attribute `(owner, name)` recorded, then compile each
    recorded call again and return {name: XLA temporaries per device in MiB}."""
    calls, jitted = {}, {}
    for owner, name in names:
        fn = jitted[name] = getattr(owner, name)

        def spy(*a, _fn=fn, _name=name, **k):
            calls[_name] = (_abstract(a), k)
            return _fn(*a, **k)
        setattr(owner, name, spy)
    try:
        run_once()
    finally:
        for owner, name in names:
            setattr(owner, name, jitted[name])
    out = {}
    for name, fn in jitted.items():
        a, k = calls[name]
        out[name] = fn.lower(*a, **k).compile().memory_analysis().temp_size_in_bytes / 2 ** 20
    return out
