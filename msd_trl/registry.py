"""`Registry`: one name -> extension table per extension point (divergences, trainers, teacher presets, corpora,
judges), all with the same rules.

Design. A registry is a `dict` (so `name in REGISTRY`, `sorted(REGISTRY)` and `REGISTRY.pop(name)` work) that checks
what goes in and says what is missing on the way out:

* `register(name, value)`, `register(name)` as a class decorator, or `register(value)` for a value that carries its
  own `name` (a `TeacherPreset`, a `Corpus`). A name already taken is refused unless `overwrite=True`, so a user's
  registration never silently replaces a built-in one; a value of the wrong kind is refused naming what the registry
  expects.
* `lookup(name)`: the value, or a `ValueError` naming the kind, the name and the registered names. A name ending in
  `":"` registers a family whose members carry an argument (`"classifier:"` serves `"classifier:<name_or_path>"`).

Every error is a `ValueError`. A leaf module: it imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Registry"]

_UNSET = object()


class Registry(dict):
    """Name -> value for one kind of extension. `kind` names it in errors (`register_<kind>`, `<kind>=...`);
    `expects` says, for an error, what `check(value)` accepts; `argument` names what follows a family's `":"`."""

    def __init__(self, kind: str, *, expects: str, check: Callable[[Any], bool], argument: str = "argument"):
        super().__init__()
        self.kind, self.expects, self.check, self.argument = kind, expects, check, argument

    def copy(self) -> Registry:
        """A registry with the same entries and rules (e.g. a scratch registry for a test)."""
        duplicate = Registry(self.kind, expects=self.expects, check=self.check, argument=self.argument)
        duplicate.update(self)
        return duplicate

    def register(self, name_or_value: Any, value: Any = _UNSET, *, overwrite: bool = False) -> Any:
        """Add `value` under `name` and return it; `register(name)` returns a decorator, `register(value)` takes the
        name from `value.name`."""
        if isinstance(name_or_value, str) and value is _UNSET:
            return lambda decorated: self.register(name_or_value, decorated, overwrite=overwrite)
        if isinstance(name_or_value, str):
            name = name_or_value
            if not self.check(value):
                raise ValueError(f"register_{self.kind}({name!r}) needs {self.expects}, got {value!r}.")
        else:
            value = name_or_value
            if not self.check(value):
                raise ValueError(
                    f"register_{self.kind}: expected {self.expects}, got {type(value).__name__}: {value!r}"
                )
            name = value.name
        if name in self and not overwrite:
            raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it.")
        self[name] = value
        return value

    def names(self) -> list[str]:
        """The registered names, sorted; a family shows the argument it takes (`classifier:<name_or_path>`)."""
        return sorted(name + (f"<{self.argument}>" if name.endswith(":") else "") for name in self)

    def lookup(self, name: Any, *, field: str | None = None) -> Any:
        """The value registered as `name`, or as the family of `"prefix:argument"`; an error names `field` (default:
        the kind) and the registered names."""
        if isinstance(name, str):
            if name in self and not name.endswith(":"):
                return self[name]
            prefix, separator, argument = name.partition(":")
            if separator and argument and f"{prefix}:" in self:
                return self[f"{prefix}:"]
        raise ValueError(f"{field or self.kind}={name!r} is unknown; registered: {self.names()}.")
