"""DPoP (RFC 9449): proofs of possession that make a copied session token useless without its key.

A client that sends a `DPoP` proof to the token endpoint gets a token bound to
the proof's key (`cnf.jkt`, the RFC 7638 thumbprint). Every later request with
that token carries a fresh proof: a JWT of `typ` dpop+jwt, signed with an
asymmetric algorithm from a fixed list by the private half of the public key
in its own `jwk` header, naming the request's method (`htm`) and URL (`htu`,
compared without query or fragment, scheme and host case-insensitively, default
ports dropped), issued within `PROOF_WINDOW` seconds of now (`iat`), hashing
the token it accompanies (`ath`), with a `jti` the store has never seen (so a
replayed proof fails on every replica). Every failure is `invalid_dpop_proof`
with a reason from a small fixed set.

With `dpop_nonce: true` a proof must also carry a `nonce` the gateway handed
out (RFC 9449 §8-9) in a `DPoP-Nonce` response header. Nonces are stateless: a
time bucket and its HMAC under a key derived from a secret every replica shares,
valid for the current and the previous `NONCE_PERIOD`. A proof without a fresh
one is refused with `use_dpop_nonce` and a new nonce.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from jwt import PyJWK

from gateway.canonical import ascii_canonical
from gateway.config.files import DpopMode
from gateway.errors import AuthError
from gateway.store.base import Store

INVALID = "invalid_dpop_proof"
USE_NONCE = "use_dpop_nonce"
NONCE_PERIOD = 60.0  # seconds a nonce is handed out for; it is accepted for one period more
PROOF_TYPE = "dpop+jwt"
ALGORITHMS = ("ES256", "ES384", "EdDSA", "PS256", "RS256")  # asymmetric only; `none` and HMAC never
PROOF_WINDOW = 60.0  # seconds a proof's iat may be from our clock, either way; its jti is kept this long past iat
MAX_PROOF = 8192  # bytes: a proof is a few hundred; larger is not a proof
_MAX_JTI = 256
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


@dataclass(frozen=True)
class Proof:
    """A verified proof: which key signed it (thumbprint), and its single-use id."""

    jkt: str
    jti: str
    iat: float
    nonce: str | None = None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of a public key.

    Raises:
        AuthError: (`invalid_dpop_proof`) not an EC, RSA or OKP key with its required members.
    """
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None or any(not isinstance(jwk.get(name), str) for name in members):
        raise AuthError("DPoP proof jwk is not a usable public key", error=INVALID)
    canonical = ascii_canonical({name: jwk[name] for name in members})
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def token_hash(access_token: str) -> str:
    """`ath`: base64url(SHA-256(the access token's ASCII bytes))."""
    return _b64url(hashlib.sha256(access_token.encode("ascii", "replace")).digest())


def normalise_url(url: str) -> str | None:
    """The URL as `htu` compares it (RFC 9449 §4.3): no query or fragment, RFC 3986 §6.2.2-3 normalised."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    default = 443 if scheme == "https" else 80
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


def check_proof(proof: str, *, method: str, url: str, now: float, access_token: str | None = None) -> Proof:
    """Every check of a proof that needs no store: header, signature, htm, htu, iat, ath.

    Raises:
        AuthError: (`invalid_dpop_proof`) naming the first check that fails.
    """
    if len(proof) > MAX_PROOF:
        raise AuthError("DPoP proof too large", error=INVALID)
    try:
        header = jwt.get_unverified_header(proof)
    except jwt.InvalidTokenError:
        raise AuthError("DPoP proof malformed", error=INVALID) from None
    if header.get("typ") != PROOF_TYPE:
        raise AuthError(f"DPoP proof typ must be {PROOF_TYPE}", error=INVALID)
    alg, jwk = header.get("alg"), header.get("jwk")
    if alg not in ALGORITHMS:
        raise AuthError("DPoP proof algorithm not accepted", error=INVALID)
    if not isinstance(jwk, dict) or any(name in jwk for name in _PRIVATE_MEMBERS):
        raise AuthError("DPoP proof jwk must be a public key", error=INVALID)
    try:
        key = PyJWK(jwk, alg).key
    except (jwt.PyJWTError, ValueError, TypeError):
        raise AuthError("DPoP proof jwk is not a usable public key", error=INVALID) from None
    try:
        claims: dict[str, Any] = jwt.decode(
            proof,
            key,
            algorithms=[alg],
            options={
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "verify_aud": False,
                "verify_iss": False,
                "require": ["jti", "htm", "htu", "iat"],
            },
        )
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"DPoP proof lacks the {exc.claim} claim", error=INVALID) from None
    except jwt.InvalidTokenError:
        raise AuthError("DPoP proof signature invalid", error=INVALID) from None
    if claims["htm"] != method:
        raise AuthError("DPoP proof htm is not this request's method", error=INVALID)
    htu = normalise_url(claims["htu"]) if isinstance(claims["htu"], str) else None
    if htu is None or htu != normalise_url(url):
        raise AuthError("DPoP proof htu is not this request's URL", error=INVALID)
    iat, jti = claims["iat"], claims["jti"]
    if not isinstance(iat, int | float) or isinstance(iat, bool) or abs(now - iat) > PROOF_WINDOW:
        raise AuthError("DPoP proof iat is not within the accepted window", error=INVALID)
    if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI:
        raise AuthError("DPoP proof jti malformed", error=INVALID)
    if access_token is not None and claims.get("ath") != token_hash(access_token):
        raise AuthError("DPoP proof ath does not hash this access token", error=INVALID)
    nonce = claims.get("nonce")
    return Proof(jkt=thumbprint(jwk), jti=jti, iat=float(iat), nonce=nonce if isinstance(nonce, str) else None)


class DpopVerifier:
    """Verifies proofs and spends their jti in the store, which every replica shares."""

    def __init__(
        self, store: Store, clock: Callable[[], float], default_mode: DpopMode, nonce_secret: bytes | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self.default_mode = default_mode
        # with a secret, proofs must carry a nonce of ours; the key is derived so it serves nothing else
        self._nonce_key = hmac.new(nonce_secret, b"dpop-nonce", hashlib.sha256).digest() if nonce_secret else None
        self._nonces: dict[int, str] = {}  # bucket -> its nonce, for the (at most two) buckets in use now

    def nonce(self) -> str | None:
        """A nonce to hand out now (None when nonces are off)."""
        if self._nonce_key is None:
            return None
        return self._nonce_for(int(self.clock() // NONCE_PERIOD))

    def nonce_header(self) -> dict[str, str]:
        """The `DPoP-Nonce` header to add to an answer now (none when nonces are off)."""
        nonce = self.nonce()
        return {"dpop-nonce": nonce} if nonce is not None else {}

    def _nonce_for(self, bucket: int) -> str:
        """The nonce of a current or previous bucket, computed once per bucket (every DPoP answer carries one)."""
        nonce = self._nonces.get(bucket)
        if nonce is None:
            assert self._nonce_key is not None
            raw = bucket.to_bytes(8, "big")
            nonce = _b64url(raw + hmac.new(self._nonce_key, raw, hashlib.sha256).digest()[:16])
            self._nonces = {kept: value for kept, value in self._nonces.items() if abs(kept - bucket) <= 1}
            self._nonces[bucket] = nonce
        return nonce

    def _fresh(self, nonce: str | None) -> bool:
        if nonce is None or len(nonce) > 64:
            return False
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return False
        if len(raw) != 24:
            return False
        bucket = int.from_bytes(raw[:8], "big")
        now = int(self.clock() // NONCE_PERIOD)
        return bucket in (now, now - 1) and hmac.compare_digest(nonce, self._nonce_for(bucket))

    def mode(self, agent_mode: DpopMode | None) -> DpopMode:
        """The agent's own setting, else gateway.yaml's."""
        return agent_mode or self.default_mode

    async def verify(
        self, proof: str, *, method: str, url: str, access_token: str | None = None, jkt: str | None = None
    ) -> Proof:
        """A proof valid for this request (and for the key `jkt`, when the token is bound to one), spent.

        Raises:
            AuthError: (`invalid_dpop_proof`) any check fails, or the proof was seen before.
            StoreUnavailable: the replay cache cannot be consulted (the caller refuses).
        """
        now = self.clock()
        checked = check_proof(proof, method=method, url=url, now=now, access_token=access_token)
        if jkt is not None and checked.jkt != jkt:
            raise AuthError("DPoP proof is signed by another key than the token is bound to", error=INVALID)
        if self._nonce_key is not None and not self._fresh(checked.nonce):
            raise AuthError("DPoP proof needs a fresh nonce from the DPoP-Nonce header", error=USE_NONCE)
        if not await self.store.remember_jti(f"dpop|{checked.jkt}|{checked.jti}", checked.iat + PROOF_WINDOW, now):
            raise AuthError("DPoP proof replayed (jti already used)", error=INVALID)
        return checked

    async def verify_holder(self, proofs: list[str], *, method: str, url: str, access_token: str, jkt: str) -> Proof:
        """The one proof (of the request's `DPoP` headers) that the holder of a token bound to `jkt` has its key.

        Raises:
            AuthError, StoreUnavailable: as for `verify`; `invalid_dpop_proof` for no proof or more than one.
        """
        if len(proofs) != 1:
            raise AuthError("a DPoP-bound token needs exactly one DPoP proof", error=INVALID)
        return await self.verify(proofs[0], method=method, url=url, access_token=access_token, jkt=jkt)


def challenge(reason: str, *, error: str = INVALID, resource_metadata: str | None = None) -> str:
    """The `WWW-Authenticate: DPoP ...` value of a refusal (RFC 9449 §7.1)."""
    description = reason.replace('"', "'")
    value = f'DPoP error="{error}", error_description="{description}", algs="{" ".join(ALGORITHMS)}"'
    return f'{value}, resource_metadata="{resource_metadata}"' if resource_metadata else value
