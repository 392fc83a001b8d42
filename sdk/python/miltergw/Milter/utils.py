# SPDX-License-Identifier: Apache-2.0
# Copyright the miltergw authors.
"""The helpers of pymilter's Milter.utils that milters use most, with the same results:

    parse_addr('<user@example.com>') -> ['user', 'example.com']
    parse_addr('<>') -> ['']            parse_addr('<postmaster>') -> ['postmaster']
    parseaddr('Jim <jim@example.org>') -> ('Jim', 'jim@example.org')
    parse_header('=?utf-8?q?caf=C3=A9?=') -> 'café'

Everything else of Milter.utils (addr2bin, iniplist, ...) is not provided: import it from
pymilter (python3-milter) if you need it; it does not depend on libmilter."""
import email.errors
import email.header
import email.utils

__all__ = ["parse_addr", "parseaddr", "parse_header"]


def parse_addr(t):
    """Split an SMTP address into [local part, domain] (or [local part] without a domain):
    angle brackets, a source route ("<@a,@b:u@d>") and the quotes of a quoted local part
    are removed. The domain is the part after the last '@'."""
    if t.startswith("<") and t.endswith(">"):
        t = t[1:-1]
        if t.startswith("@") and ":" in t:  # source route
            t = t.split(":", 1)[1]
    if "@" not in t:
        return [t]
    local, domain = t.rsplit("@", 1)
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = local[1:-1]
    return [local, domain]


def parse_header(val):
    """A header value with its RFC 2047 encoded words decoded, as str."""
    try:
        return str(email.header.make_header(email.header.decode_header(val)))
    except (email.errors.HeaderParseError, LookupError, UnicodeDecodeError):
        return val


def parseaddr(t):
    """(display name, address) of a header address ("Name <a@b>", "a@b (Name)").
    pymilter's own version fixed cases the standard library's got wrong then; the
    standard library of Python 3.11 gives pymilter's answers."""
    return email.utils.parseaddr(t)
