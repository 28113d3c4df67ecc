"""Random tokens for names and ids (lock ids, backup id suffixes, temporary file names)."""

from __future__ import annotations

import os


def random_hex(nbytes: int) -> str:
    """``nbytes`` bytes from the operating system's CSPRNG as ``2 * nbytes`` hex digits.

    The same as ``secrets.token_hex``, which is not used because importing ``secrets``
    imports ``hmac`` and with it OpenSSL's libcrypto: about 10 ms of every command's start
    with a cold page cache, for a library nothing else on that path loads.
    """
    return os.urandom(nbytes).hex()
