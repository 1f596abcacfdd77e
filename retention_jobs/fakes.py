"""Faker locales and providers, checked where a policy is loaded: a typo (`{fake: nmae}`,
`locale: nb_NOO`) is refused by `validate` without a store, with a suggestion, not found by
the nightly run. Kept apart from `anonymise` so loading a policy does not import Polars."""

import difflib
from functools import lru_cache

# Faker names Norwegian Bokmål after the older code.
FAKER_LOCALES = {"nb_NO": "no_NO", "nn_NO": "no_NO"}
_NOT_PROVIDERS = {"seed", "seed_instance", "seed_locale", "add_provider", "get_providers"}


@lru_cache(maxsize=1)
def known_locales() -> tuple[str, ...]:
    from faker.config import AVAILABLE_LOCALES

    return tuple(sorted({*AVAILABLE_LOCALES, *FAKER_LOCALES}))


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
    return tuple(
        m for m in dir(faker_for(locale)) if not m.startswith("_") and m not in _NOT_PROVIDERS
    )


@lru_cache(maxsize=256)
def check_provider(provider: str, locale: str) -> str | None:
    """Why this provider cannot be used, or None."""
    if provider.startswith("_") or provider in _NOT_PROVIDERS:
        return f"{provider!r} is not a Faker provider"
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
    if not isinstance(value, (str, int, float)):
        return f"Faker provider {provider!r} returns {type(value).__name__}, not text"
    return None


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
