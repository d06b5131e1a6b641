"""What a login password must be: at least 12 characters, and not guessable by zxcvbn's
estimate (score 3 of 4 or better: "safely unguessable", about 10^8 guesses and up), judged
with the user's own name among the words it knows. Tokens are not passwords: agents and API
clients use their own random ones."""

from __future__ import annotations

MIN_LENGTH = 12
MIN_SCORE = 3
MAX_JUDGED = 72  # zxcvbn's own max_length


def password_problem(password: str, user_inputs: list[str]) -> str | None:
    """Why `password` is too weak, with zxcvbn's own advice; None when it will do."""
    if len(password) < MIN_LENGTH:
        return (
            f"the password has {len(password)} characters; at least {MIN_LENGTH} are needed. "
            "Fix: use a passphrase of a few uncommon words"
        )
    # Imported here, not with the module: zxcvbn's dictionaries take 30 ms to load, which every
    # controller and `fleet` command would pay at start for the few that set a password.
    from zxcvbn import zxcvbn

    # zxcvbn refuses more than 72 characters (ValueError), and its cost grows with the
    # length: judged on the first 72, since what lies past them adds no doubt.
    verdict = zxcvbn(password[:MAX_JUDGED], user_inputs=user_inputs)
    if verdict["score"] >= MIN_SCORE:
        return None
    feedback = verdict["feedback"]
    advice = " ".join(filter(None, [feedback.get("warning"), *feedback.get("suggestions", [])]))
    return (
        f"the password is too easy to guess (strength {verdict['score']} of 4, {MIN_SCORE} "
        f"needed){': ' + advice if advice else ''} Fix: use a passphrase of a few uncommon words"
    )
