"""The flex backend's compile limits (no compile happens here: the checks are on the settings)."""

import pytest


def test_flex_raises_dynamo_recompile_limit_where_it_compiles() -> None:
    # dynamic=False compiles once per shape: with dynamo's default limit (8) a ninth shape would silently run
    # eager flex with (M+L)^2 memory. Building the compiled function (lazy: nothing is compiled yet) raises it.
    import torch._dynamo

    from gmat.ops import flex

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    total = (
        "accumulated_recompile_limit"
        if hasattr(config, "accumulated_recompile_limit")
        else ("accumulated_cache_size_limit")
    )
    saved = {n: getattr(config, n) for n in (name, total)}  # restored by hand: dynamo's config is no plain module
    setattr(config, name, 8)
    flex._compiled_flex.cache_clear()
    try:
        flex._compiled_flex()
        assert getattr(config, name) >= flex.RECOMPILE_LIMIT >= 64
        assert getattr(config, total) >= flex.RECOMPILE_LIMIT
    finally:
        flex._compiled_flex.cache_clear()
        for n, value in saved.items():
            setattr(config, n, value)


def test_flex_refuses_a_shape_past_the_limit(monkeypatch) -> None:
    from gmat.ops import flex

    monkeypatch.setattr(flex, "RECOMPILE_LIMIT", 2)
    monkeypatch.setattr(flex, "_compiled_shapes", set())
    flex._admit_shape(("a",))
    flex._admit_shape(("b",))
    flex._admit_shape(("a",))  # a shape seen before costs nothing
    with pytest.raises(ValueError, match=r"flex: 2 input shapes already compiled.*eagerly"):
        flex._admit_shape(("c",))
