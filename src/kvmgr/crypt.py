"""SHA-512 crypt (``$6$``), the password hash kickstart, preseed and cloud-init accept.

Python's ``crypt`` module is deprecated (removed in 3.13) and passlib is not a dependency, so the
algorithm (Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512", as glibc implements it) is
written out here.  Only the hash ever leaves kvmgr: install scripts and seeds never carry a
password in clear.
"""

from __future__ import annotations

import hashlib
import secrets

_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DEFAULT_ROUNDS = 5000
# The byte order glibc's sha512-crypt writes the digest in, three bytes per four characters.
_ORDER = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54),
    (34, 55, 13), (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60),
    (40, 61, 19), (62, 20, 41),
)  # fmt: skip


def _b64(value: int, count: int) -> str:
    out = []
    for _ in range(count):
        out.append(_ALPHABET[value & 0x3F])
        value >>= 6
    return "".join(out)


def _repeat(digest: bytes, length: int) -> bytes:
    return digest * (length // 64) + digest[: length % 64]


def sha512_crypt(password: str, salt: str | None = None, rounds: int = _DEFAULT_ROUNDS) -> str:
    """``$6$salt$hash`` of ``password``; a random 16-character salt when none is given."""
    if salt is None:
        salt = "".join(secrets.choice(_ALPHABET) for _ in range(16))
    salt = salt[:16]
    key, salt_bytes = password.encode(), salt.encode()
    alternate = hashlib.sha512(key + salt_bytes + key).digest()
    context = hashlib.sha512(key + salt_bytes + _repeat(alternate, len(key)))
    length = len(key)
    while length:
        context.update(alternate if length & 1 else key)
        length >>= 1
    digest_a = context.digest()
    p_bytes = _repeat(hashlib.sha512(key * len(key)).digest(), len(key))
    s_bytes = _repeat(hashlib.sha512(salt_bytes * (16 + digest_a[0])).digest(), len(salt_bytes))
    current = digest_a
    for index in range(rounds):
        step = hashlib.sha512(p_bytes if index & 1 else current)
        if index % 3:
            step.update(s_bytes)
        if index % 7:
            step.update(p_bytes)
        step.update(current if index & 1 else p_bytes)
        current = step.digest()
    encoded = "".join(
        _b64((current[a] << 16) | (current[b] << 8) | current[c], 4) for a, b, c in _ORDER
    )
    encoded += _b64(current[63], 2)
    prefix = "$6$" if rounds == _DEFAULT_ROUNDS else f"$6$rounds={rounds}$"
    return f"{prefix}{salt}${encoded}"


def is_sha512_crypt(text: str) -> bool:
    return text.startswith("$6$") and text.count("$") >= 3
