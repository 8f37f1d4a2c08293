"""The optional API key: where it is read from, and how a request proves it.

MAX 26.7 has no API-key setting. This one is off by default, so `max serve`
flags are unchanged. It is read from the environment (`GPT2_MAX_API_KEY`)
or a file (`GPT2_MAX_API_KEY_FILE`), never from the command line, where
`ps` shows it to every user of the machine. A request proves it with
`Authorization: Bearer <key>`, as OpenAI's clients send their `api_key`;
the comparison takes the same time whatever the bytes sent.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from .install import StartUpError

API_KEY_ENV = "GPT2_MAX_API_KEY"
API_KEY_FILE_ENV = "GPT2_MAX_API_KEY_FILE"


class ApiKeyError(StartUpError):
    """The API key setting cannot be used; the server does not start."""


def load_api_key(environ: Mapping[str, str]) -> str | None:
    """The key this server requires, or None when no key is set."""
    value = environ.get(API_KEY_ENV)
    file = environ.get(API_KEY_FILE_ENV)
    if value is not None and file is not None:
        raise ApiKeyError(
            f"both {API_KEY_ENV} and {API_KEY_FILE_ENV} are set; set one of them"
        )
    if file is not None:
        if not file.strip():
            raise ApiKeyError(f"{API_KEY_FILE_ENV} is set but empty; name a file")
        try:
            value = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ApiKeyError(
                f"{API_KEY_FILE_ENV}={file!r} cannot be read: {reason}"
            ) from None
        source = f"the file {API_KEY_FILE_ENV} names ({file})"
    else:
        source = API_KEY_ENV
    if value is None:
        return None
    key = value.strip()
    if not key:
        raise ApiKeyError(f"the API key in {source} is empty or only whitespace")
    if not all(33 <= ord(c) <= 126 for c in key):
        raise ApiKeyError(
            f"the API key in {source} must be printable ASCII without spaces, "
            "as an HTTP header carries it"
        )
    return key


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of the request's one `Authorization: Bearer` header."""
    values = [v for k, v in headers if k.lower() == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token


def has_key(headers: Iterable[tuple[bytes, bytes]], key: str) -> bool:
    """Whether the request carries `key` as its bearer token."""
    token = bearer_token(headers)
    return token is not None and hmac.compare_digest(token, key.encode("ascii"))
