"""Short-lived JWTs for the real-time gateway.

One algorithm (HS256, never taken from the token's header), a fixed audience and issuer, and the
claims the gateway needs: session (``sid``), user (``sub``), tenant, participant name, expiry, and
the id of the API key the token was minted with (``kid``: the gateway refuses tokens whose key is
revoked, and closes their connections when it is). Tokens without ``kid`` (minted before it
existed) are refused: nothing could tell whether their key still stands.
Times are checked against dormant's :class:`~dormant.clock.Clock`, so tests can travel.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from dormant.clock import Clock
from dormant.errors import DormantError, InvalidInput

ALGORITHM = "HS256"
AUDIENCE = "dormant-gateway"
ISSUER = "dormant"
#: Longer tokens are refused before any parsing.
MAX_TOKEN_LENGTH = 4096
MAX_NAME_LENGTH = 100
MIN_SECRET_LENGTH = 32
MAX_KEY_ID_LENGTH = 64


class TokenError(DormantError):
    """The token cannot open a connection; ``code`` says why (sent to the client)."""

    status = 401

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Claims:
    session_id: str
    user_id: str
    tenant: str
    name: str
    expires_at: datetime
    token_id: str
    #: The API key the token was minted with.
    key_id: str


def new_secret() -> str:
    return secrets.token_urlsafe(48)


class TokenIssuer:
    def __init__(self, secret: str, clock: Clock, ttl: float = 600.0, max_ttl: float = 86400.0):
        if len(secret) < MIN_SECRET_LENGTH:
            raise InvalidInput(f"gateway secret must be at least {MIN_SECRET_LENGTH} characters")
        if not 0 < ttl <= max_ttl:
            raise InvalidInput(f"gateway token ttl must be between 0 and {max_ttl:g} seconds")
        self._secret = secret
        self.clock = clock
        self.ttl = ttl
        self.max_ttl = max_ttl

    def mint(
        self,
        *,
        session_id: str,
        user_id: str,
        tenant: str,
        key_id: str,
        name: str | None = None,
        ttl: float | None = None,
    ) -> tuple[str, datetime]:
        """A token for one session, minted with API key ``key_id``; returns it with its expiry."""
        if not key_id or len(key_id) > MAX_KEY_ID_LENGTH:
            raise InvalidInput(f"key id must be 1-{MAX_KEY_ID_LENGTH} characters")
        ttl = self.ttl if ttl is None else ttl
        if not 0 < ttl <= self.max_ttl:
            raise InvalidInput(f"ttl must be between 0 and {self.max_ttl:g} seconds")
        name = user_id if name is None else name
        if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise InvalidInput(f"name must be 1-{MAX_NAME_LENGTH} printable characters")
        now = self.clock.now()
        # JWT times are whole seconds; round the expiry down so it is never later than promised.
        expires = datetime.fromtimestamp(int((now + timedelta(seconds=ttl)).timestamp()), UTC)
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user_id,
            "sid": session_id,
            "tenant": tenant,
            "name": name,
            "kid": key_id,
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), expires

    def verify(self, token: object) -> Claims:
        if not isinstance(token, str) or not token:
            raise TokenError("unauthorized", "missing token: connect with auth: {token}")
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("invalid_token", "token too long")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={
                    "require": ["exp", "iat", "aud", "iss", "sub", "sid"],
                    # Times are checked below against dormant's clock.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise TokenError("invalid_token", "token is not meant for the gateway") from None
        except jwt.InvalidIssuerError:
            raise TokenError("invalid_token", "token was not issued by dormant") from None
        except jwt.InvalidSignatureError:
            raise TokenError("invalid_token", "token signature does not verify") from None
        except jwt.InvalidAlgorithmError:
            raise TokenError("invalid_token", f"token algorithm must be {ALGORITHM}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError("invalid_token", f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise TokenError("invalid_token", "token is malformed") from None
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise TokenError("invalid_token", "token expiry is not a number")
        try:
            expires_at = datetime.fromtimestamp(exp, UTC)
        except (OverflowError, ValueError, OSError):  # 1e20, NaN, out of the platform's range
            raise TokenError("invalid_token", "token expiry is out of range") from None
        if expires_at <= self.clock.now():
            raise TokenError("token_expired", "token expired; ask your backend for a new one")
        values = [claims.get(k) for k in ("sid", "sub", "tenant", "name")]
        sid, sub, tenant, name = values
        if not all(isinstance(v, str) and 0 < len(v) <= 200 for v in values):
            raise TokenError("invalid_token", "token claims are malformed")
        assert isinstance(sid, str) and isinstance(sub, str)
        assert isinstance(tenant, str) and isinstance(name, str)
        kid = claims.get("kid")
        if kid is None:
            raise TokenError(
                "invalid_token",
                "token names no API key (minted by an older dormant); ask for a new one",
            )
        if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KEY_ID_LENGTH:
            raise TokenError("invalid_token", "token claims are malformed")
        jti = claims.get("jti")
        return Claims(sid, sub, tenant, name, expires_at, jti if isinstance(jti, str) else "", kid)
