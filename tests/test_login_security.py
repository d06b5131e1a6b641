"""Logging in and being revoked, as an attacker tries them, against the real app and database:
throttling per account and per address with a growing wait, the same work for a name nobody
has, revocation that reaches every credential a user issued, and the second factor (TOTP with
recovery codes) where a setting requires it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from datetime import timedelta

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet.api.app import create_app
from fleet.auth import passwords
from fleet.auth.login import KNOWN_CLIENT_COOKIE, LoginThrottle
from fleet.auth.models import User
from fleet.auth.users import revoke_user
from fleet.settings import Settings
from tests.fixtures_auth import PASSWORD, Tokens, user_token


def make_client(engine: Engine, **settings: str) -> TestClient:
    app = create_app(Settings(database_url=str(engine.url), **settings), engine=engine)
    return TestClient(app)


@pytest.fixture
def client(registered: Engine) -> Iterator[TestClient]:
    with make_client(registered) as client:
        yield client


def login(client: TestClient, name: str, password: str, **extra: str) -> object:
    return client.post("/api/v1/auth/token", data={"username": name, "password": password, **extra})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- throttling ------------------------------------------------------------------------------


def test_wrong_passwords_on_one_account_are_throttled_and_the_right_one_waits_too(
    client: TestClient, tokens: Tokens
) -> None:
    answers = [login(client, "ops-centre", f"guess-{i}") for i in range(8)]
    codes = [a.status_code for a in answers]  # type: ignore[attr-defined]
    assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3, codes
    last = answers[-1]
    assert 1 <= int(last.headers["Retry-After"]) <= 60  # type: ignore[attr-defined]
    assert "too many failed logins" in last.json()["detail"]  # type: ignore[attr-defined]
    # While throttled, even the right password is not checked.
    assert login(client, "ops-centre", PASSWORD).status_code == 429  # type: ignore[attr-defined]
    # Another account is not held up by this one's guesser.
    assert login(client, "tech-upm", PASSWORD).status_code == 200  # type: ignore[attr-defined]


def test_one_address_guessing_many_names_is_throttled(registered: Engine) -> None:
    with make_client(registered, login_limits_address="10/minute") as client:
        codes = [login(client, f"nobody-{i}", "x").status_code for i in range(12)]  # type: ignore[attr-defined]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429], codes


def test_the_wait_grows_down_the_ladder() -> None:
    throttle = LoginThrottle(account="2/second;3/minute")
    for _ in range(2):
        throttle.failed("ops", "10.0.0.1")
    first = throttle.wait_s("ops", "10.0.0.1")
    assert first is not None and first[1] <= 1
    deadline = time.monotonic() + 5
    while throttle.wait_s("ops", "10.0.0.1") is not None:
        assert time.monotonic() < deadline, "the one-second window never reopened"
        time.sleep(0.05)
    throttle.failed("ops", "10.0.0.1")
    second = throttle.wait_s("ops", "10.0.0.1")
    assert second is not None and second[1] > 30, second  # now the minute's limit holds
    throttle.succeeded("ops")  # a login clears the account's count
    assert throttle.wait_s("ops", "10.0.0.1") is None


def test_a_guesser_elsewhere_cannot_lock_the_owner_out_of_a_browser_that_logged_in_before(
    client: TestClient, tokens: Tokens
) -> None:
    assert login(client, "ops-centre", PASSWORD).status_code == 200  # type: ignore[attr-defined]
    owners = client.cookies.get(KNOWN_CLIENT_COOKIE)
    assert owners, "a login sets the known-client cookie"
    assert login(client, "tech-upm", PASSWORD).status_code == 200  # type: ignore[attr-defined]
    technicians = client.cookies.get(KNOWN_CLIENT_COOKIE)
    client.cookies.clear()
    # A guesser with no cookie, a forged one, or another account's uses up the account's limit.
    for cookie in (None, "forged." + "0" * 64, technicians, owners.split(".")[0] + ".x"):
        client.cookies.clear()
        if cookie:
            client.cookies.set(KNOWN_CLIENT_COOKIE, cookie)
        for _ in range(2):
            login(client, "ops-centre", "guess")
    client.cookies.clear()
    refused = login(client, "ops-centre", PASSWORD)
    assert refused.status_code == 429  # type: ignore[attr-defined]
    assert "this account" in refused.json()["detail"]  # type: ignore[attr-defined]
    # The owner's browser is not held up by them.
    client.cookies.set(KNOWN_CLIENT_COOKIE, owners)
    assert login(client, "ops-centre", PASSWORD).status_code == 200  # type: ignore[attr-defined]
    # Its own failures count against it alone: five, then it waits, and says why on the page.
    codes = [login(client, "ops-centre", "nope").status_code for _ in range(6)]  # type: ignore[attr-defined]
    assert codes == [401] * 5 + [429], codes
    page = client.post(
        "/login",
        data={"username": "ops-centre", "password": PASSWORD},
        cookies={"fleet_lang": "fr"},
    )
    assert page.status_code == 429 and "depuis ce navigateur" in page.text


def test_a_success_clears_the_accounts_failures(client: TestClient, tokens: Tokens) -> None:
    for _ in range(4):
        assert login(client, "ops-centre", "nope").status_code == 401  # type: ignore[attr-defined]
    assert login(client, "ops-centre", PASSWORD).status_code == 200  # type: ignore[attr-defined]
    for _ in range(4):
        assert login(client, "ops-centre", "nope").status_code == 401  # type: ignore[attr-defined]


def test_the_login_page_is_throttled_alike(client: TestClient, tokens: Tokens) -> None:
    codes = [
        client.post("/login", data={"username": "ops-centre", "password": "x"}).status_code
        for _ in range(6)
    ]
    assert codes == [401] * 5 + [429]


def test_an_unknown_name_costs_as_much_as_a_known_one(
    registered: Engine, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the product's own Argon2 parameters: before, 299 ms against 39 ms."""
    real = passwords.password_context()
    monkeypatch.setattr(passwords, "PASSWORDS", real)
    monkeypatch.setattr(passwords, "_DECOY", None)
    with Session(registered) as session:
        user = session.exec(select(User).where(User.name == "tech-upm")).one()
        user.password_hash = real.hash(PASSWORD)
        session.add(user)
        session.commit()
    with make_client(registered, login_limits_account="", login_limits_address="") as client:
        login(client, "warm-up", "x")

        # Interleaved, so that a busy machine (tests run in parallel) weighs on both alike.
        times: dict[str, list[float]] = {"tech-upm": [], "no-such-user": []}
        for _ in range(7):
            for name, spent in times.items():
                start = time.perf_counter()
                assert login(client, name, "wrong").status_code == 401  # type: ignore[attr-defined]
                spent.append(time.perf_counter() - start)
        known, unknown = (statistics.median(t) for t in times.values())
    assert 0.5 < unknown / known < 2.0, (known, unknown)


# --- revocation ------------------------------------------------------------------------------


def test_revoking_a_user_ends_every_credential_they_issued(
    client: TestClient, registered: Engine, tokens: Tokens
) -> None:
    tech = tokens.headers("technician")
    enrol = client.post("/api/v1/enrolment/tokens", json={"site": "upm"}, headers=tech)
    assert enrol.status_code == 201
    session_token = login(client, "tech-upm", PASSWORD).json()["access_token"]  # type: ignore[attr-defined]
    client.cookies.clear()
    with Session(registered) as session:
        revoke_user(session, "tech-upm")
    redeem = client.post("/api/v1/enrolment", json={"token": enrol.json()["token"]})
    assert redeem.status_code == 401, redeem.text
    assert client.get("/api/v1/auth/me", headers=tech).status_code == 401
    assert client.get("/api/v1/auth/me", headers=bearer(session_token)).status_code == 401
    assert login(client, "tech-upm", PASSWORD).status_code == 401  # type: ignore[attr-defined]


def test_an_enrolment_token_of_a_user_revoked_elsewhere_is_refused(
    client: TestClient, registered: Engine, tokens: Tokens
) -> None:
    """Revoked as another process would (only the user's row): the redemption checks it."""
    tech = tokens.headers("technician")
    token = client.post("/api/v1/enrolment/tokens", json={"site": "upm"}, headers=tech)
    from fleet.protocol.messages import utcnow

    with Session(registered) as session:
        user = session.exec(select(User).where(User.name == "tech-upm")).one()
        user.revoked_at = utcnow()
        session.add(user)
        session.commit()
    redeem = client.post("/api/v1/enrolment", json={"token": token.json()["token"]})
    assert redeem.status_code == 401 and "revoked" in redeem.json()["detail"]


# --- second factor ---------------------------------------------------------------------------


def set_up_totp(client: TestClient, token: str) -> tuple[pyotp.TOTP, list[str]]:
    begun = client.post("/api/v1/auth/totp", headers=bearer(token))
    assert begun.status_code == 201, begun.text
    body = begun.json()
    assert body["otpauth_uri"].startswith("otpauth://totp/")
    totp = pyotp.TOTP(body["secret"])
    wrong = client.post("/api/v1/auth/totp/confirm", json={"code": "000000"}, headers=bearer(token))
    assert wrong.status_code == 422 or totp.now() == "000000"
    confirmed = client.post(
        "/api/v1/auth/totp/confirm", json={"code": totp.now()}, headers=bearer(token)
    )
    assert confirmed.status_code == 204, confirmed.text
    return totp, body["recovery_codes"]


def test_a_second_factor_once_on_is_needed_at_every_login(
    client: TestClient, tokens: Tokens
) -> None:
    first = login(client, "tech-upm", PASSWORD).json()["access_token"]  # type: ignore[attr-defined]
    client.cookies.clear()
    totp, recovery = set_up_totp(client, first)
    assert len(recovery) == 10
    no_code = login(client, "tech-upm", PASSWORD)
    assert no_code.status_code == 401 and "second factor" in no_code.json()["detail"]  # type: ignore[attr-defined]
    wrong_password = login(client, "tech-upm", "nope", otp=totp.now())
    assert "second factor" not in wrong_password.json()["detail"]  # type: ignore[attr-defined]
    code = totp.now()
    assert login(client, "tech-upm", PASSWORD, otp=code).status_code == 200  # type: ignore[attr-defined]
    # The same code again (a replay from the wire) is refused.
    assert login(client, "tech-upm", PASSWORD, otp=code).status_code == 401  # type: ignore[attr-defined]
    # A recovery code works, once.
    assert login(client, "tech-upm", PASSWORD, otp=recovery[0]).status_code == 200  # type: ignore[attr-defined]
    assert login(client, "tech-upm", PASSWORD, otp=recovery[0]).status_code == 401  # type: ignore[attr-defined]
    # The technician's API token is no login: unaffected.
    assert client.get("/api/v1/auth/me", headers=tokens.headers("technician")).status_code == 200


def test_where_required_a_login_without_one_may_only_set_it_up(
    registered: Engine, tokens: Tokens
) -> None:
    with make_client(registered, second_factor_roles="ops,technician") as client:
        answer = login(client, "ops-centre", PASSWORD)
        assert answer.status_code == 200  # type: ignore[attr-defined]
        assert answer.json()["second_factor_setup_required"] is True  # type: ignore[attr-defined]
        setup = answer.json()["access_token"]  # type: ignore[attr-defined]
        client.cookies.clear()
        refused = client.get("/api/v1/devices", headers=bearer(setup))
        assert refused.status_code == 403 and "second factor" in refused.json()["detail"]
        page = client.post("/login", data={"username": "ops-centre", "password": PASSWORD})
        assert page.status_code == 403 and "second factor" in page.text
        totp, _ = set_up_totp(client, setup)
        full = login(client, "ops-centre", PASSWORD, otp=totp.now()).json()  # type: ignore[attr-defined]
        assert full["second_factor_setup_required"] is False
        client.cookies.clear()
        assert (
            client.get("/api/v1/devices", headers=bearer(full["access_token"])).status_code == 200
        )
        # API tokens (ops' and a vendor's) are not logins: the setting does not touch them.
        assert client.get("/api/v1/devices", headers=tokens.headers("ops")).status_code == 200
        assert client.get("/api/v1/devices", headers=tokens.headers("vendor")).status_code == 200


def test_a_vendor_has_no_second_factor_and_api_tokens_cannot_set_one(
    client: TestClient, registered: Engine, tokens: Tokens
) -> None:
    vendor = login(client, "vendor-seewo", PASSWORD).json()["access_token"]  # type: ignore[attr-defined]
    client.cookies.clear()
    assert client.post("/api/v1/auth/totp", headers=bearer(vendor)).status_code == 409
    api = user_token(registered, "ops-api", "ops", ttl=timedelta(hours=1))
    assert client.post("/api/v1/auth/totp", headers=bearer(api)).status_code == 409


def test_the_second_factor_setting_names_only_roles_that_log_in() -> None:
    with pytest.raises(ValueError, match="only ops and technician"):
        Settings(second_factor_roles="ops,vendor")


def test_0008_adds_second_factor_as_the_model_declares_and_goes_back(empty_db_url: str) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect
    from sqlmodel import SQLModel

    from fleet.db import alembic_config, make_engine, migrate

    engine = make_engine(empty_db_url)
    try:
        migrate(engine)
        assert "second_factor" in inspect(engine).get_table_names()
        with engine.connect() as conn:
            context = MigrationContext.configure(conn)
            drift = [
                d for d in compare_metadata(context, SQLModel.metadata) if "second_factor" in str(d)
            ]
        assert drift == []
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "0007")
        assert "second_factor" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_any_name_password_and_code_is_refused_cleanly(registered: Engine, tokens: Tokens) -> None:
    """Hostile form values (NUL, control characters, huge, right-to-left, emoji): a 401 with
    its reason or a 422 for a value past the form's bounds, never a 500; the real user is
    still let in afterwards."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    with make_client(registered, login_limits_account="", login_limits_address="") as client:

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            name=st.text(max_size=300) | st.sampled_from(["ops-centre", "tech-upm", "\x00"]),
            password=st.text(max_size=2000),
            code=st.none() | st.text(max_size=80),
        )
        def attempt(name: str, password: str, code: str | None) -> None:
            data = {"username": name, "password": password}
            if code is not None:
                data["otp"] = code
            answer = client.post("/api/v1/auth/token", data=data)
            assert answer.status_code in (401, 422), (answer.status_code, answer.text)
            assert answer.json()["detail"]
            page = client.post("/login", data={**data, "next": "/"})
            assert page.status_code in (401, 422), page.status_code

        attempt()
        assert login(client, "ops-centre", PASSWORD).status_code == 200  # type: ignore[attr-defined]


def test_two_logins_racing_with_one_totp_code_let_only_one_in(migrated_postgres_url: str) -> None:
    """The first login holds the factor's row until it commits; the second, with the same
    code, waits for it and then sees the step used. Without the row lock both read an unused
    step and both get in."""
    import threading
    from datetime import UTC, datetime

    from fleet.auth import second_factor
    from fleet.auth.users import add_user
    from fleet.db import make_engine, migrate

    engine = make_engine(migrated_postgres_url)
    migrate(engine)
    now = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    with Session(engine) as setup:
        user = add_user(setup, "ops-centre", "ops", password=PASSWORD)
        enrolment = second_factor.begin(setup, user, now)
        totp = pyotp.TOTP(enrolment.secret)
        second_factor.confirm(setup, user, totp.at(now), now)
        user_id = user.id
    code = totp.at(now)
    first = Session(engine)
    second_answer: list[bool] = []

    def second_login() -> None:
        with Session(engine) as other:
            racer = other.get(User, user_id)
            assert racer is not None
            second_answer.append(second_factor.check(other, racer, code, now))
            other.commit()

    try:
        holder = first.get(User, user_id)
        assert holder is not None
        assert second_factor.check(first, holder, code, now) is True
        racing = threading.Thread(target=second_login)
        racing.start()
        racing.join(timeout=1.0)
        assert racing.is_alive(), "the second login read the factor while the first held it"
        first.commit()
        racing.join(timeout=30)
        assert second_answer == [False]
    finally:
        first.close()
        engine.dispose()
