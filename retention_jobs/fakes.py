"""Faker locales and providers, checked where a policy is loaded: a typo (`{fake: nmae}`,
`locale: nb_NOO`) is refused by `validate` without a store, with a suggestion, not found by
the nightly run. Kept apart from `anonymise` so loading a policy does not import Polars.

The checks read `faker_catalog.json`, made from the installed Faker by
`python -m retention_jobs.fakes` (every locale, and for each provider whether it takes no
argument and returns text): loading Faker's provider modules for a few locales took most of a
`validate` call. When the installed Faker is another version than the catalogue's, the checks
ask Faker itself (slower, same answers); tests compare the two."""

import difflib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

CATALOG = Path(__file__).with_name("faker_catalog.json")

# Faker names Norwegian Bokmål after the older code.
FAKER_LOCALES = {"nb_NO": "no_NO", "nn_NO": "no_NO"}
_NOT_PROVIDERS = {"seed", "seed_instance", "seed_locale", "add_provider", "get_providers"}


@lru_cache(maxsize=1)
def _catalog() -> dict[str, Any] | None:
    """The shipped catalogue, if it was made from the installed Faker's version."""
    from importlib.metadata import version

    try:
        data = json.loads(CATALOG.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if data.get("faker") == version("faker") else None


def _verdicts(locale: str) -> dict[str, str] | None:
    """provider -> "" (usable) or why not, for `locale`, from the catalogue."""
    cat = _catalog()
    if cat is None:
        return None
    name = FAKER_LOCALES.get(locale, locale)
    if name not in cat["locales"]:
        return None
    return {**cat["common"], **cat["locales"][name]}


@lru_cache(maxsize=1)
def known_locales() -> tuple[str, ...]:
    cat = _catalog()
    if cat is not None:
        available = list(cat["locales"])
    else:
        from faker.config import AVAILABLE_LOCALES

        available = list(AVAILABLE_LOCALES)
    return tuple(sorted({*available, *FAKER_LOCALES}))


def did_you_mean(name: str, options: list[str] | tuple[str, ...], cutoff: float = 0.6) -> str:
    if len(name) > 100:  # no long comparisons for hostile input
        return ""
    close = difflib.get_close_matches(name, options, n=1, cutoff=cutoff)
    return f"did you mean {close[0]!r}?" if close else ""


def locale_problem(locale: str) -> str | None:
    """Why Faker cannot use `locale` (with a suggestion), or None."""
    if locale in known_locales():
        return None
    hint = did_you_mean(locale, known_locales()) or "use e.g. nb_NO, sv_SE, da_DK or fi_FI"
    return f"{locale!r} is not a locale such as nb_NO that Faker knows; {hint}"


@lru_cache(maxsize=16)
def faker_for(locale: str):
    """One Faker instance per locale and process (building one costs about 0.1 s). Callers
    that need determinism seed it right before use (`fake_pool`)."""
    from faker import Faker

    return Faker(FAKER_LOCALES.get(locale, locale))


@lru_cache(maxsize=16)
def providers(locale: str) -> tuple[str, ...]:
    verdicts = _verdicts(locale)
    if verdicts is not None:
        return tuple(sorted(verdicts))
    return live_providers(locale)


def live_providers(locale: str) -> tuple[str, ...]:
    return tuple(
        m for m in dir(faker_for(locale)) if not m.startswith("_") and m not in _NOT_PROVIDERS
    )


@lru_cache(maxsize=256)
def check_provider(provider: str, locale: str) -> str | None:
    """Why this provider cannot be used, or None."""
    if provider.startswith("_") or provider in _NOT_PROVIDERS:
        return f"{provider!r} is not a Faker provider"
    verdicts = _verdicts(locale)
    if verdicts is not None:
        if provider not in verdicts:
            return f"Faker has no provider {provider!r}"
        return verdicts[provider] or None
    return live_check(provider, locale)


def live_check(provider: str, locale: str) -> str | None:
    """`check_provider` asked of Faker itself: builds the locale and calls the provider."""
    try:
        faker = faker_for(locale)
    except AttributeError:
        return f"Faker has no locale {locale!r}; use e.g. nb_NO, sv_SE, da_DK, fi_FI"
    try:
        value = getattr(faker, provider)()
    except AttributeError:
        return f"Faker has no provider {provider!r}"
    except TypeError:
        return f"Faker provider {provider!r} needs arguments; pick one that takes none"
    except Exception as e:  # noqa: BLE001 - a provider that fails without arguments
        return f"Faker provider {provider!r} fails without arguments ({type(e).__name__})"
    if not isinstance(value, (str, int, float)):
        return f"Faker provider {provider!r} returns {type(value).__name__}, not text"
    return None


def build_catalog() -> dict[str, Any]:
    """Every locale's providers and their verdicts, from the installed Faker."""
    from importlib.metadata import version

    from faker.config import AVAILABLE_LOCALES

    per: dict[str, dict[str, str]] = {}
    for locale in sorted(AVAILABLE_LOCALES):
        faker_for(locale).seed_instance(0)
        per[locale] = {p: live_check(p, locale) or "" for p in live_providers(locale)}
    common = {
        p: v for p, v in per[sorted(per)[0]].items() if all(per[loc].get(p) == v for loc in per)
    }
    return {
        "faker": version("faker"),
        "common": common,
        "locales": {
            loc: {p: v for p, v in d.items() if common.get(p) != v}
            | {p: "Faker has no provider " + repr(p) for p in common if p not in d}
            for loc, d in per.items()
        },
    }


def provider_hint(provider: str, locale: str) -> str:
    try:
        options = providers(locale)
    except AttributeError:
        options = ()
    if provider in options:  # it exists, but takes arguments or returns no text
        return "pick one that takes no arguments and returns text, such as name or email"
    return did_you_mean(provider, options) or (
        "see the Faker provider list: name, email, phone_number, address, ..."
    )


if __name__ == "__main__":  # python -m retention_jobs.fakes: remake the catalogue
    CATALOG.write_text(json.dumps(build_catalog(), sort_keys=True, separators=(",", ":")) + "\n")
    print(f"wrote {CATALOG}")
