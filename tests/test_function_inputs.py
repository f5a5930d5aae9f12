"""What a by-value function's pickle is made of (pure): immutable inputs listed, anything mutable refused."""

from __future__ import annotations

import math
import types
from typing import Any

import tasks

from achilles_like.client.calls import ReferenceBlobs
from achilles_like.client.function_inputs import frozen_inputs, importable
from achilles_like.serialization import loads


def _in_main(source: str, name: str, namespace: dict[str, Any] | None = None) -> Any:
    """A function defined in a fresh ``__main__``-like namespace (by value, as a script's code is)."""
    scope: dict[str, Any] = {"__name__": "__main__", **(namespace or {})}
    exec(compile(source, "<script>", "exec"), scope)
    return scope[name]


def test_importable_functions_classes_and_builtins_go_by_name() -> None:
    """Module-level functions, classes and builtins are references; __main__ code and closures are not."""
    assert importable(tasks.square) and importable(math.sqrt) and importable(types.SimpleNamespace)
    assert not importable(_in_main("def f(x):\n    return x\n", "f"))
    assert not importable(lambda x: x)


def test_a_function_over_immutable_globals_lists_them() -> None:
    """Code, defaults and the immutable globals it names (numbers, tuples, modules, functions) are listed."""
    f = _in_main(
        "SCALE = 3\nNAMES = ('a', 'b')\ndef f(x, k=2):\n    return math.floor(x * SCALE * k) + len(NAMES)\n",
        "f",
        {"math": math},
    )
    inputs = frozen_inputs(f)
    assert inputs is not None
    assert f.__code__ in inputs and math in inputs  # math.floor is looked up on the node, by name
    assert any(part is f.__globals__["NAMES"] for part in inputs)


def test_a_mutable_global_a_main_class_or_function_attributes_refuse_reuse() -> None:
    """Anything that can change in place without rebinding makes the inputs unknown (None)."""
    assert frozen_inputs(_in_main("TABLE = {}\ndef f(x):\n    return TABLE.get(x)\n", "f")) is None
    assert frozen_inputs(_in_main("class C:\n    pass\ndef f(x):\n    return C()\n", "f")) is None
    with_attribute = _in_main("def f(x):\n    return x\n", "f")
    with_attribute.tag = "mine"
    assert frozen_inputs(with_attribute) is None


def test_nested_and_recursive_main_functions_are_followed() -> None:
    """A __main__ function calling another (even recursively) lists the other's inputs too."""
    source = "LIMIT = 5\ndef g(x):\n    return f(x - 1) if x > LIMIT else x\ndef f(x):\n    return g(x)\n"
    f = _in_main(source, "f")
    inputs = frozen_inputs(f)
    assert inputs is not None and f.__globals__["g"].__code__ in inputs


def test_a_rebound_global_gives_a_fresh_pickle_with_the_new_value() -> None:
    """Rebinding a global the function names (to a new object, even an equal one) is seen at the next call."""
    blobs = ReferenceBlobs()
    f = _in_main("BIG = 10 ** 30\ndef f():\n    return BIG\n", "f")
    first = blobs.blob(f, None)
    assert blobs.blob(f, None) is first
    f.__globals__["BIG"] = 10**30 + 1
    second = blobs.blob(f, None)
    assert second is not first and loads(second)[0]() == 10**30 + 1


def test_a_global_defined_after_the_first_call_is_seen() -> None:
    """A name that was missing (say a builtin shadowed later) changes the inputs."""
    blobs = ReferenceBlobs()
    f = _in_main("def f(x):\n    return len(x)\n", "f")
    first = blobs.blob(f, None)
    f.__globals__["len"] = abs
    assert blobs.blob(f, None) is not first
