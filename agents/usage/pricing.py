"""The price table: USD per 1M tokens per model, split into input, cached input and output.

The table ships with the package (``agents/usage/prices.json``: the embedded models at price 0 and the
common OpenAI models at their public list prices) and can be extended or corrected without a release
by an override file (``SOMA_PRICES_FILE``, JSON or TOML, same layout as the shipped file)::

    # prices.toml
    [models."gpt-4o"]
    input = 2.5
    cached = 1.25       # optional: falls back to input
    output = 10.0

    [aliases]
    "my-deployment" = "gpt-4o"

An override entry replaces the shipped entry of the same model whole.

Cost (OpenAI semantics: cached tokens are a subset of the input tokens)::

    cost = ((input - cached) * input_rate + cached * cached_rate + output * output_rate) / 1_000_000

Looking a model up (:meth:`PriceTable.price`), first match wins, names compared case-insensitively:

1. the exact name, then an alias of it;
2. the name without a provider prefix (``openai/gpt-4o`` → ``gpt-4o``), exact or alias;
3. the name without snapshot suffixes — a date ``-2024-08-06`` / ``-20240806``, a four-digit
   ``-0613``, or ``-latest`` — exact or alias (``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``).

There is deliberately no looser prefix matching: variants such as ``gpt-4o-audio-preview`` or
``gpt-4o-realtime-preview`` cost more than ``gpt-4o``, and a wrong price is worse than a missing one.
An unknown model has no price (``None``); callers decide what that means (the usage agent counts the
tokens and reports the events as unpriced).
"""

from __future__ import annotations

import json
import logging
import math
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from agents.exceptions import PriceTableError

__all__ = ["DEFAULT_PRICES_RESOURCE", "ModelPrice", "PriceTable", "load_table_file"]

logger = logging.getLogger(__name__)

DEFAULT_PRICES_RESOURCE = "prices.json"
_PER_TOKENS = 1_000_000
_SNAPSHOT_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest)$")
_ENTRY_KEYS = {"input", "output", "cached", "note"}


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M tokens; ``cached_per_mtok`` None means cached input costs the same as input."""

    input_per_mtok: float
    output_per_mtok: float
    cached_per_mtok: float | None = None

    @property
    def cached_rate(self) -> float:
        return self.input_per_mtok if self.cached_per_mtok is None else self.cached_per_mtok

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        """USD for one call; ``cached_tokens`` are part of ``input_tokens``. Always finite (ValueError if not)."""
        if input_tokens < 0 or output_tokens < 0 or cached_tokens < 0:
            raise ValueError("token counts must not be negative")
        if cached_tokens > input_tokens:
            raise ValueError(
                f"cached_tokens ({cached_tokens}) exceeds input_tokens ({input_tokens}): cached tokens are "
                "a subset of the input tokens"
            )
        try:
            cost = (
                (input_tokens - cached_tokens) * self.input_per_mtok
                + cached_tokens * self.cached_rate
                + output_tokens * self.output_per_mtok
            ) / _PER_TOKENS
        except OverflowError:  # a count beyond what a float holds
            cost = math.inf
        if not math.isfinite(cost):  # a float product can overflow to inf without raising
            raise ValueError(f"the cost of {input_tokens} input and {output_tokens} output tokens overflows")
        return cost


class PriceTable:
    """Model prices with the lookup rules of the module docstring."""

    def __init__(self, models: dict[str, ModelPrice], aliases: dict[str, str] | None = None,
                 sources: tuple[str, ...] = ()) -> None:
        self._models = {name.lower(): price for name, price in models.items()}
        self._aliases = {alias.lower(): target.lower() for alias, target in (aliases or {}).items()}
        for alias, target in self._aliases.items():
            if target not in self._models:
                raise PriceTableError(f"alias {alias!r} points to {target!r}, which has no price")
        self.sources = sources
        self._cache: dict[str, ModelPrice | None] = {}

    @classmethod
    def load(cls, override_path: Path | None = None) -> PriceTable:
        """The shipped table, with the entries of ``override_path`` (JSON or TOML) laid over it."""
        shipped = resources.files("agents.usage").joinpath(DEFAULT_PRICES_RESOURCE).read_text(encoding="utf-8")
        models, aliases = _parse(json.loads(shipped), f"agents/usage/{DEFAULT_PRICES_RESOURCE}")
        sources = [f"agents/usage/{DEFAULT_PRICES_RESOURCE}"]
        if override_path is not None:
            extra_models, extra_aliases = _parse(load_table_file(override_path, PriceTableError), str(override_path))
            models.update(extra_models)
            aliases.update(extra_aliases)
            sources.append(str(override_path))
            logger.info("price table: %d models from %s laid over the shipped table", len(extra_models),
                        override_path)
        return cls(models, aliases, tuple(sources))

    def price(self, model: str) -> ModelPrice | None:
        """The price of ``model`` (exact name, alias, provider prefix, snapshot suffix), None when unknown."""
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = self._lookup(model)
        if len(self._cache) < 10_000:  # model names come from outside: keep the memo bounded
            self._cache[model] = found
        return found

    def cost(self, model: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float | None:
        """USD for one call of ``model``; None when the model has no price."""
        price = self.price(model)
        if price is None:
            return None
        return price.cost(input_tokens, output_tokens, cached_tokens)

    def models(self) -> dict[str, ModelPrice]:
        return dict(self._models)

    def _lookup(self, model: str) -> ModelPrice | None:
        name = model.strip().lower()
        for candidate in _candidates(name):
            price = self._models.get(candidate)
            if price is None and candidate in self._aliases:
                price = self._models[self._aliases[candidate]]
            if price is not None:
                return price
        return None


def _candidates(name: str) -> list[str]:
    names = [name]
    if "/" in name:
        names.append(name.rsplit("/", 1)[1])
    for base in list(names):
        stripped = base
        while (shorter := _SNAPSHOT_SUFFIX.sub("", stripped)) != stripped and shorter:
            stripped = shorter
            names.append(stripped)
    return names


def load_table_file(path: Path, error: type[Exception]) -> dict[str, Any]:
    """A JSON (``.json``) or TOML (``.toml``) file holding one object/table; ``error`` on any problem."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise error(f"{path}: expected a .json or .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise error(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected an object at the top level")
    return data


def _parse(data: dict[str, Any], source: str) -> tuple[dict[str, ModelPrice], dict[str, str]]:
    models_raw = data.get("models", {})
    aliases_raw = data.get("aliases", {})
    if not isinstance(models_raw, dict):
        raise PriceTableError(f"{source}: 'models' must be an object of model name -> prices")
    if not isinstance(aliases_raw, dict) or not all(isinstance(v, str) for v in aliases_raw.values()):
        raise PriceTableError(f"{source}: 'aliases' must be an object of alias -> model name")
    models = {}
    for name, entry in models_raw.items():
        where = f"{source}: model {name!r}"
        if not isinstance(entry, dict):
            raise PriceTableError(f"{where}: expected an object with input, output and optionally cached")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise PriceTableError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_ENTRY_KEYS)})")
        cached = entry.get("cached")
        models[name] = ModelPrice(
            input_per_mtok=_rate(entry.get("input"), f"{where}: input"),
            output_per_mtok=_rate(entry.get("output"), f"{where}: output"),
            cached_per_mtok=None if cached is None else _rate(cached, f"{where}: cached"),
        )
    return models, dict(aliases_raw)


def _rate(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PriceTableError(f"{where}: expected a number of USD per 1M tokens, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise PriceTableError(f"{where}: must be a finite number >= 0, got {value!r}")
    return float(value)
