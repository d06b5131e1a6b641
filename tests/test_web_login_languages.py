"""The login page in each language: its labels, its second-factor field and every refusal it
shows (wrong password, wrong or missing code, a second factor to set up, too many failures)
follow the browser's language or the user's choice, Arabic right to left; the login policy
behind them (statuses, Retry-After, throttling) is the same in every language."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from fleet.api.app import create_app
from fleet.settings import Settings
from fleet.web import login_page
from fleet.web.i18n import LANGUAGES, translations
from tests.fixtures_auth import PASSWORD, Tokens
from tests.test_login_security import set_up_totp

DIRECTION = {"en": "ltr", "fr": "ltr", "ar": "rtl", "ru": "ltr"}


def make_client(engine: Engine, **settings: Any) -> TestClient:
    app = create_app(Settings(database_url=str(engine.url), **settings), engine=engine)
    return TestClient(app)


@pytest.fixture
def client(registered: Engine, tokens: Tokens) -> Iterator[TestClient]:
    with make_client(registered) as client:
        yield client


def problem(html: str) -> str:
    found = re.search(r'data-testid="login-problem">(.*?)</p>', html, re.S)
    assert found, html
    return unescape(found.group(1))


def said(lang: str, message: str, **values: object) -> str:
    return (
        translations(lang).gettext(message) % values
        if values
        else translations(lang).gettext(message)
    )


@pytest.mark.parametrize("lang", sorted(LANGUAGES))
def test_the_form_speaks_the_browsers_language(client: TestClient, lang: str) -> None:
    page = client.get("/login", headers={"Accept-Language": f"{lang};q=0.9, de;q=0.5"})
    html = unescape(page.text)
    assert f'<html lang="{lang}" dir="{DIRECTION[lang]}">' in page.text
    for label in ("Log in", "User", "Password", "Code", "if you set up a second factor"):
        assert said(lang, label) in html
    assert "Authorization: Bearer <token>" in html  # the header's own words, untranslated
    if lang != "en":
        for english in (">Log in<", "User <input", "Password <input", "if you set up"):
            assert english not in html, (lang, english)


@pytest.mark.parametrize("lang", ["fr", "ar", "ru"])
def test_a_wrong_password_and_the_throttle_are_told_in_the_language(
    client: TestClient, lang: str
) -> None:
    client.cookies.set("fleet_lang", lang)  # the user's choice, over the browser's English
    answers = [
        client.post(
            "/login",
            data={"username": "ops-centre", "password": "wrong"},
            headers={"Accept-Language": "en"},
        )
        for _ in range(6)
    ]
    assert [a.status_code for a in answers] == [401] * 5 + [429]  # the policy, unchanged
    assert problem(answers[0].text) == said(lang, login_page.WRONG_LOGIN)
    wait = answers[-1].headers["Retry-After"]
    assert int(wait) > 0
    assert problem(answers[-1].text) == said(lang, login_page.THROTTLED["account"], seconds=wait)
    assert f'lang="{lang}"' in answers[-1].text


def test_a_missing_code_and_a_second_factor_to_set_up_are_told_in_the_language(
    registered: Engine, tokens: Tokens
) -> None:
    with make_client(registered) as client:
        first = client.post(
            "/api/v1/auth/token", data={"username": "tech-upm", "password": PASSWORD}
        ).json()["access_token"]
        client.cookies.clear()
        set_up_totp(client, first)
        page = client.post(
            "/login",
            data={"username": "tech-upm", "password": PASSWORD, "otp": "000000x"},
            headers={"Accept-Language": "ru-KG"},
        )
        assert page.status_code == 401
        assert problem(page.text) == said("ru", login_page.WRONG_CODE)
        # A wrong password with a code says nothing of the code, in Russian as in English.
        page = client.post(
            "/login",
            data={"username": "tech-upm", "password": "nope", "otp": "123456"},
            headers={"Accept-Language": "ru"},
        )
        assert problem(page.text) == said("ru", login_page.WRONG_LOGIN)
    with make_client(registered, second_factor_roles="ops,technician") as client:
        page = client.post(
            "/login",
            data={"username": "ops-centre", "password": PASSWORD},
            headers={"Accept-Language": "ar-IQ"},
        )
        assert page.status_code == 403 and 'dir="rtl"' in page.text
        assert problem(page.text) == said("ar", login_page.MUST_ENROL)


def test_every_refusal_has_its_words_in_every_catalog() -> None:
    for lang in ("fr", "ar", "ru"):
        t = translations(lang)
        for message in (
            login_page.WRONG_LOGIN,
            login_page.WRONG_CODE,
            login_page.MUST_ENROL,
            *login_page.THROTTLED.values(),
        ):
            assert t.gettext(message) != message, (lang, message)
