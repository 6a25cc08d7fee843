"""Which saga definitions this orchestrator runs, found in a Python module."""

from __future__ import annotations

import importlib

from statemachines.dsl import Saga

DEFAULT_MODULE = "statemachines.sagas"


class UnknownSaga(LookupError):
    pass


class Registry:
    """Sagas by type and version; a new saga starts on the newest version."""

    def __init__(self, sagas: list[Saga]) -> None:
        if not sagas:
            raise ValueError("no sagas to run")
        self._by_version = {(s.name, s.version): s for s in sagas}
        self._latest: dict[str, Saga] = {}
        for saga in sorted(sagas, key=lambda s: s.version):
            self._latest[saga.name] = saga

    @classmethod
    def from_module(cls, module: str = DEFAULT_MODULE) -> Registry:
        """Every `Saga` defined at the top level of `module`."""
        try:
            loaded = importlib.import_module(module)
        except ImportError as exc:
            raise UnknownSaga(f"cannot import saga module {module!r}: {exc}") from None
        sagas = [value for value in vars(loaded).values() if isinstance(value, Saga)]
        if not sagas:
            raise UnknownSaga(f"module {module!r} defines no Saga at its top level")
        return cls(sagas)

    def latest(self, saga_type: str) -> Saga:
        try:
            return self._latest[saga_type]
        except KeyError:
            raise UnknownSaga(f"unknown saga type {saga_type!r}; known: {', '.join(sorted(self._latest))}") from None

    def get(self, saga_type: str, version: int) -> Saga:
        try:
            return self._by_version[(saga_type, version)]
        except KeyError:
            raise UnknownSaga(f"saga type {saga_type!r} version {version} is not loaded") from None

    @property
    def sagas(self) -> list[Saga]:
        return list(self._by_version.values())

    @property
    def participants(self) -> set[str]:
        return {participant for saga in self.sagas for participant in saga.participants}
