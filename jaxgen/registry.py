"""A named registry of interchangeable pieces (rewards, advantage estimators, policy losses).

    LOSSES = Registry("policy loss", "grpo.loss.name")

    @LOSSES.register("grpo")
    def grpo_loss(...): ...

    LOSSES.get("grpo")  # UserError naming the choices and the config field when unknown
"""

from __future__ import annotations

from typing import Callable, Iterator

from jaxgen.errors import UserError


class Registry:
    """name -> object, filled by the `register(name)` decorator."""

    def __init__(self, kind: str, config_field: str):
        self.kind = kind  # what the entries are, for error messages
        self.config_field = config_field  # where a user chooses one
        self._entries: dict[str, Callable] = {}

    def register(self, name: str):
        """Decorator: register the decorated object under `name` (a later one replaces it)."""
        def wrap(obj):
            self._entries[name] = obj
            return obj
        return wrap

    def get(self, name: str):
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r}; choose one of {self.names()} "
                            f"(config field {self.config_field})")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
