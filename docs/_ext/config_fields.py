"""A table of keys for every pydantic model autodoc documents (the job file's sections).

Each row is a field: its YAML key, its type with the constraints pydantic checks, its
default, and the field's attribute docstring (the string literal under it in the source).
The fields are then left out of the member list, and so is ``model_config``.
"""

from __future__ import annotations

import inspect
import types
import typing

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from sphinx.pycode import ModuleAnalyzer

_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _constraints(metadata) -> list[str]:
    out = []
    for m in metadata:
        if isinstance(m, FieldInfo):
            out += _constraints(m.metadata)
            continue
        for attr, sign in _BOUNDS.items():
            value = getattr(m, attr, None)
            if value is not None and type(m).__name__.lower() == attr:
                out.append(f"{sign} {value}")
        if type(m).__name__ == "MinLen" and m.min_length == 1:
            out.append("non-empty")
    return out


def _type(tp, metadata=()) -> str:
    """rst text for an annotation: ``int ≥ 1``, ``'bic' | 'aic'``, ``list of str``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _type(args[0], list(metadata) + list(args[1:]))
    if origin in (typing.Union, types.UnionType):
        parts = [_type(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or null" if type(None) in args else text
    if origin is typing.Literal:
        return " | ".join(f"``{a!r}``" if isinstance(a, str) else f"``{a}``" for a in args)
    bounds = _constraints(metadata)
    if origin is list:
        text = f"list of {_type(args[0])}" if args else "list"
    elif tp is typing.Any:
        text = "any"
    elif inspect.isclass(tp) and issubclass(tp, BaseModel):
        text = f":class:`~{tp.__module__}.{tp.__qualname__}`"
    elif inspect.isclass(tp):
        text = tp.__name__
    else:
        text = str(tp)
    return " ".join([text, *bounds])


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        made = field.default_factory()
        if isinstance(made, BaseModel):
            return "its defaults"
        return f"``{made!r}``"
    if field.default is PydanticUndefined:
        return "required"
    if field.default is None:
        return "null"
    return f"``{field.default!r}``"


def _field_docs(cls) -> dict[str, list[str]]:
    try:
        analyzer = ModuleAnalyzer.for_module(cls.__module__)
    except Exception:  # pragma: no cover - a model defined outside a source file
        return {}
    docs = analyzer.find_attr_docs()
    return {attr: lines for (owner, attr), lines in docs.items() if owner == cls.__qualname__}


def _table(cls) -> list[str]:
    docs = _field_docs(cls)
    out = [
        "",
        ".. rubric:: Keys",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 18 30 12 40",
        "",
        "   * - key",
        "     - type",
        "     - default",
        "     - meaning",
    ]
    for name, field in cls.model_fields.items():
        doc = [line for line in docs.get(name, []) if line.strip()]
        out += [
            f"   * - ``{name}``",
            f"     - {_type(field.annotation, field.metadata)}",
            f"     - {_default(field)}",
            f"     - {doc[0] if doc else ''}",
        ]
        out += [f"       {line}" for line in doc[1:]]
    return out + [""]


def _is_model(obj) -> bool:
    return inspect.isclass(obj) and issubclass(obj, BaseModel)


# The fields of the class whose docstring autodoc processed last: autodoc documents a
# class's docstring, then filters its members (the skip event is not told the class).
_current_fields: frozenset[str] = frozenset()


def process_docstring(app, what, name, obj, options, lines):
    global _current_fields
    if what != "class":
        return
    if _is_model(obj):
        _current_fields = frozenset(obj.model_fields) | {"model_config"}
        lines.extend(_table(obj))
    else:
        _current_fields = frozenset()


def skip_member(app, what, name, obj, skip, options):
    if name in _current_fields and not callable(obj) and not isinstance(obj, property):
        return True
    return None


def setup(app):
    # After numpydoc (priority 500) has turned the docstring into rst.
    app.connect("autodoc-process-docstring", process_docstring, priority=600)
    app.connect("autodoc-skip-member", skip_member)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
