"""Recognisers for values that identify a person: e-mail addresses, phone numbers, IP
addresses, IBANs, payment cards, and the national identity numbers of Norway, Sweden, Denmark
and Finland with their check digits. Used by `scan` on sampled values; each takes one text
value and returns True or False, never raising.

References for the check digits: Skatteetaten (fødselsnummer, D-number: two modulus-11
digits), Skatteverket (personnummer, samordningsnummer: Luhn over ten digits), CPR-kontoret
(CPR: modulus 11 for numbers issued before 2007, none since), Digi- ja väestötietovirasto
(henkilötunnus: check character of the nine digits modulo 31).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from datetime import date

_EMAIL = re.compile(r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$")
_EMAIL_IN = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(r"^(\(?(\+|00)\d{1,4}\)?)?[\d\s().-]{6,22}(\s*(x|ext\.?)\s*\d{1,6})?$", re.I)
_PHONE_IN = re.compile(r"(?<![\w+])(\+|00)\d[\d\s().-]{6,18}\d(?!\w)")
_DATE = re.compile(r"^(\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4})$")
_IBAN = re.compile(r"^[A-Z]{2}\d{2}[A-Z0-9]{10,30}$")
_FI_CHECK = "0123456789ABCDEFHJKLMNPRSTUVWXY"
_FI_CENTURY = {
    "+": 1800,
    "-": 1900,
    "A": 2000,
    **dict.fromkeys("YXWVU", 1900),
    **dict.fromkeys("BCDEF", 2000),
}
_FI = re.compile(r"^(\d{6})([-+A-FU-Y])(\d{3})([0-9A-Y])$")
_SE = re.compile(r"^(\d{2})?(\d{6})[-+]?(\d{4})$")
_DK = re.compile(r"^(\d{6})-?(\d{4})$")
_ID_IN = re.compile(
    r"(?<![\w-])\d{6}[-+A]?\d{4,5}(?![\w-])|(?<!\w)\d{6}[-+A-FU-Y]\d{3}[0-9A-Y](?!\w)"
)


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _valid_date(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def is_email(text: str) -> bool:
    return len(text) <= 254 and bool(_EMAIL.match(text.strip()))


def is_phone(text: str) -> bool:
    """A phone number as people write it: 8 to 15 digits, with a + or 00 prefix, spaces,
    hyphens, dots or parentheses. A bare run of digits counts only with a + or 00 prefix, or
    as a national number with its trunk 0 (9 to 11 digits): other plain digit strings are
    more often ids (a column named like a phone is judged more loosely by `scan`)."""
    t = text.strip()
    if not _PHONE.match(t) or _DATE.match(t):
        return False
    main = re.split(r"(?i)\s*(x|ext\.?)\s*\d", t)[0]
    n = len(_digits(main))
    if not 8 <= n <= 15:
        return False
    if t.lstrip("(").startswith(("+", "00")) or re.search(r"[\s().-]", main):
        return True
    return t.startswith("0") and 9 <= n <= 11


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        return False
    return True


def is_iban(text: str) -> bool:
    t = re.sub(r"\s", "", text).upper()
    if not _IBAN.match(t):
        return False
    moved = t[4:] + t[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def is_card(text: str) -> bool:
    t = text.strip()
    if not re.fullmatch(r"[\d -]{12,23}", t):
        return False
    d = _digits(t)
    return 12 <= len(d) <= 19 and luhn(d)


def is_no_national_id(text: str) -> bool:
    """Fødselsnummer or D-number (day + 40): eleven digits, a birth date, two check digits."""
    d = text.strip()
    if not re.fullmatch(r"\d{11}", d):
        return False
    n = [int(c) for c in d]
    w1 = (3, 7, 6, 1, 8, 9, 4, 5, 2)
    w2 = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)
    k1 = 11 - sum(a * b for a, b in zip(w1, n[:9], strict=True)) % 11
    k1 = 0 if k1 == 11 else k1
    k2 = 11 - sum(a * b for a, b in zip(w2, n[:10], strict=True)) % 11
    k2 = 0 if k2 == 11 else k2
    if k1 == 10 or k2 == 10 or (k1, k2) != (n[9], n[10]):
        return False
    day, month = int(d[0:2]), int(d[2:4])
    if day > 40:
        day -= 40  # D-number
    if month > 40:
        month -= 40  # H-number (health services)
    return _valid_date(2000 + int(d[4:6]), month, day) or _valid_date(
        1900 + int(d[4:6]), month, day
    )


def is_se_national_id(text: str) -> bool:
    """Personnummer or samordningsnummer (day + 60): YYMMDD-NNNC, YYYYMMDDNNNC and the like;
    Luhn over the ten-digit form."""
    m = _SE.match(text.strip())
    if not m:
        return False
    ymd, rest = m.group(2), m.group(3)
    month, day = int(ymd[2:4]), int(ymd[4:6])
    if day > 60:
        day -= 60
    year = int((m.group(1) or "20") + ymd[0:2])
    if not (_valid_date(year, month, day) or _valid_date(year - 100, month, day)):
        return False
    return luhn(ymd + rest)


def _dk_mod11(d: str) -> bool:
    weights = (4, 3, 2, 7, 6, 5, 4, 3, 2, 1)
    return sum(int(c) * w for c, w in zip(d, weights, strict=True)) % 11 == 0


def is_dk_national_id(text: str) -> bool:
    """CPR: DDMMYY-SSSS with a real date. Numbers issued since 2007 need not pass modulus 11,
    so a CPR written with its hyphen counts on its date alone; ten bare digits (which could be
    anything) count only when they pass modulus 11 too."""
    t = text.strip()
    m = _DK.match(t)
    if not m:
        return False
    d = m.group(1) + m.group(2)
    day, month, yy = int(d[0:2]), int(d[2:4]), int(d[4:6])
    if not (_valid_date(1900 + yy, month, day) or _valid_date(2000 + yy, month, day)):
        return False
    return "-" in t or _dk_mod11(d)


def is_fi_national_id(text: str) -> bool:
    """Henkilötunnus: DDMMYY, century sign, three digits, check character (mod 31)."""
    m = _FI.match(text.strip().upper())
    if not m:
        return False
    ddmmyy, sign, serial, check = m.groups()
    year = _FI_CENTURY[sign] + int(ddmmyy[4:6])
    if not _valid_date(year, int(ddmmyy[2:4]), int(ddmmyy[0:2])):
        return False
    return _FI_CHECK[int(ddmmyy + serial) % 31] == check


RECOGNISERS: dict[str, Callable[[str], bool]] = {
    "email": is_email,
    "phone": is_phone,
    "ip_address": is_ip,
    "iban": is_iban,
    "payment_card": is_card,
    "national_id_no": is_no_national_id,
    "national_id_se": is_se_national_id,
    "national_id_dk": is_dk_national_id,
    "national_id_fi": is_fi_national_id,
}
"""Class -> recogniser of a whole value. Order matters where classes overlap: a value is given
the first class that recognises it."""


def embedded(text: str) -> set[str]:
    """Classes of identifiers found inside free text (an e-mail, a phone number with its
    international prefix, a national id)."""
    found: set[str] = set()
    if _EMAIL_IN.search(text):
        found.add("email")
    if any(is_phone(m.group(0)) for m in _PHONE_IN.finditer(text)):
        found.add("phone")
    for m in _ID_IN.finditer(text):
        for cls in ("national_id_no", "national_id_se", "national_id_dk", "national_id_fi"):
            if RECOGNISERS[cls](m.group(0)):
                found.add(cls)
    return found
