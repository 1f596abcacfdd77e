"""The shipped Faker catalogue (`retention_jobs/faker_catalog.json`) gives the same answers as
Faker itself, so `validate` can check `fake:` providers and locales without loading Faker's
provider modules (most of a `validate` call before)."""

import pytest

from retention_jobs import fakes

# Providers whose verdict does not depend on a random draw (some, such as pyobject, return a
# value of a random type: their verdict can differ between two calls).
STABLE = [
    "name",
    "first_name",
    "last_name",
    "email",
    "phone_number",
    "street_address",
    "city",
    "postcode",
    "company",
    "ssn",
    "iban",
    "user_name",
    "ipv4",
    "date_of_birth",
    "address",
    "pydict",
    "random_int",
    "no_such_provider",
]


def test_the_catalogue_was_made_from_the_installed_faker():
    assert fakes._catalog() is not None, (
        "retention_jobs/faker_catalog.json is missing or was made from another Faker version: "
        "run `uv run python -m retention_jobs.fakes` and commit it"
    )


@pytest.mark.parametrize("locale", ["nb_NO", "sv_SE", "da_DK", "fi_FI", "en_GB", "en_US"])
def test_the_catalogue_agrees_with_faker(locale):
    assert fakes.providers(locale) == tuple(sorted(fakes.live_providers(locale)))
    for provider in STABLE:
        assert fakes.check_provider(provider, locale) == fakes.live_check(provider, locale), (
            provider
        )


def test_a_stale_catalogue_falls_back_to_faker(monkeypatch):
    monkeypatch.setattr(fakes, "_catalog", lambda: None)
    fakes.check_provider.cache_clear()
    fakes.providers.cache_clear()
    try:
        assert fakes.check_provider("name", "nb_NO") is None
        assert fakes.check_provider("nmae", "nb_NO") == "Faker has no provider 'nmae'"
    finally:
        fakes.check_provider.cache_clear()
        fakes.providers.cache_clear()
