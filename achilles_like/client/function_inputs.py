"""What a function pickled by value is made of, to tell when a pickle made earlier is still exact.

A function defined in ``__main__`` (a script, a notebook) travels by value:
dill pickles its code, defaults, closure and the globals it names, and a
module-level ``map`` call would pickle it again every time (about 0.25 ms).
A pickle made earlier may be reused only if nothing it was made of can have
changed since. :func:`frozen_inputs` lists those things when all of them
are immutable (numbers, strings, bytes, tuples and frozensets of those,
modules, functions and classes importable by name, other such ``__main__``
functions) and says ``None`` otherwise (a global list, dict or instance,
a ``__main__`` class, function attributes): that function is pickled
afresh at every call. The caller compares the lists by identity and holds
the earlier one, so no object it names can be freed and its id reused.
"""

from __future__ import annotations

import sys
import types
from typing import Any

_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, range, type(Ellipsis))
_LIMIT = 2_000  # objects looked at per function: beyond this, pickling afresh is cheaper to trust
_MISSING = object()  # a name the function's globals lack (a builtin, or not defined yet)


def importable(obj: object) -> bool:
    """Whether ``obj`` is a function, builtin or class that its module holds under its qualified name.

    dill pickles such an object as a reference (its name), whatever its
    globals or attributes hold; ``__main__`` code is never one.
    """
    if not isinstance(obj, types.FunctionType | types.BuiltinFunctionType | type):
        return False
    module = sys.modules.get(getattr(obj, "__module__", None) or "__main__")
    if module is None or module.__name__ == "__main__":
        return False
    found: object = module
    for part in obj.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is obj


def frozen_inputs(func: object) -> tuple[object, ...] | None:
    """The objects ``func``'s by-value pickle is made of, if all are immutable; else None."""
    seen: list[object] = []
    if _collect(func, seen, set()) and len(seen) <= _LIMIT:
        return tuple(seen)
    return None


def _collect(obj: object, seen: list[object], visiting: set[int]) -> bool:
    if len(seen) > _LIMIT:
        return False
    seen.append(obj)
    if isinstance(obj, _IMMUTABLE) or importable(obj):
        return True
    if isinstance(obj, types.ModuleType):
        return obj.__name__ != "__main__"  # pickled by name; __main__ itself goes by value
    if isinstance(obj, tuple | frozenset):
        return all(_collect(part, seen, visiting) for part in obj)
    if isinstance(obj, types.FunctionType):
        return _collect_function(obj, seen, visiting)
    return False  # mutable, or of a kind dill pickles by value that could change in place


def _collect_function(func: types.FunctionType, seen: list[object], visiting: set[int]) -> bool:
    if id(func) in visiting:  # recursion between functions: already being looked at
        return True
    visiting.add(id(func))
    if func.__dict__:  # function attributes live in a mutable dict
        return False
    seen += [func.__code__, func.__name__, func.__qualname__, func.__module__]
    parts: list[Any] = [func.__defaults__]
    if func.__kwdefaults__:
        parts += sorted(func.__kwdefaults__.items())
    for cell in func.__closure__ or ():
        try:
            parts.append(cell.cell_contents)
        except ValueError:  # a cell not filled yet
            parts.append(_MISSING)
    names = _global_names(func.__code__)
    globals_ = func.__globals__
    parts += [globals_.get(name, _MISSING) for name in names]
    for part in parts:
        if part is _MISSING:
            seen.append(part)
        elif not _collect(part, seen, visiting):
            return False
    return True


def _global_names(code: types.CodeType) -> list[str]:
    """Every name ``code`` and the code nested in it may look up (a superset of its globals)."""
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _global_names(const)
    return names
