"""Pure detectors of regulated data in one value or one piece of text.

The classification scan (``core.retention.classify``) hands every sampled value
to these functions and keeps only their verdicts: counts, never the values.
Each detector is strict on purpose (a checksum, an allocation rule, a fixed
shape) because a proposal the operator must confirm is only useful when it is
rarely wrong: card numbers pass the Luhn check and carry a card network's
prefix, IBANs pass ISO 13616's mod-97 check, US SSNs avoid the never-issued
areas, UK NINOs the never-allocated prefixes.

Nothing here does I/O or keeps state.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

PERSONAL, CARDHOLDER, HEALTH, FINANCIAL = "personal", "cardholder", "health", "financial"
CLASS_ORDER = (PERSONAL, CARDHOLDER, HEALTH, FINANCIAL)

# ---------------------------------------------------------------- card numbers (PAN)

_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a digit string; False for anything but digits."""
    if not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_network(digits: str) -> bool:
    """Whether the number starts like a payment card of a network (ISO/IEC 7812 issuer prefixes).

    The Luhn check alone passes one random number in ten; requiring a network's
    prefix and length keeps order numbers and timestamps out.
    """
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    if digits[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return n == 16
    if two in (34, 37):  # American Express
        return n == 15
    if digits.startswith(("6011", "65")) or 644 <= int(digits[:3]) <= 649:  # Discover
        return 16 <= n <= 19
    if 3528 <= four <= 3589:  # JCB
        return 16 <= n <= 19
    if two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:  # Diners Club
        return 14 <= n <= 19
    if digits.startswith(("62", "81")):  # UnionPay
        return 16 <= n <= 19
    return False


def is_card_number(value: str) -> bool:
    """A whole value that is a payment card number (spaces or dashes between digits allowed)."""
    digits = re.sub(r"[ -]", "", value.strip())
    return 13 <= len(digits) <= 19 and luhn_valid(digits) and _card_network(digits)


def find_card_numbers(text: str) -> int:
    """How many card numbers appear in free text."""
    return sum(1 for m in _DIGIT_RUN.finditer(text) if is_card_number(m.group()))


# ---------------------------------------------------------------- national identifiers

_SSN = re.compile(r"(?<![0-9-])([0-9]{3})([- ])([0-9]{2})\2([0-9]{4})(?![0-9-])")
_SSN_WHOLE = re.compile(r"([0-9]{3})([- ]?)([0-9]{2})\2([0-9]{4})")


def _ssn_parts_valid(area: str, group: str, serial: str) -> bool:
    # The SSA never issues area 000, 666 or 900-999, group 00 or serial 0000.
    a = int(area)
    return a != 0 and a != 666 and a < 900 and group != "00" and serial != "0000"


def is_us_ssn(value: str, *, bare_digits: bool = False) -> bool:
    """A whole value that is a US Social Security number.

    ``123-45-6789`` / ``123 45 6789``; nine bare digits only with ``bare_digits``
    (the column's name says SSN), since any nine-digit number would match.
    """
    m = _SSN_WHOLE.fullmatch(value.strip())
    if not m or (not m.group(2) and not bare_digits):
        return False
    return _ssn_parts_valid(m.group(1), m.group(3), m.group(4))


def find_us_ssns(text: str) -> int:
    return sum(1 for m in _SSN.finditer(text) if _ssn_parts_valid(m.group(1), m.group(3), m.group(4)))


_NINO = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2}) ?([0-9]{2}) ?([0-9]{2}) ?([0-9]{2}) ?([A-Da-d])(?![A-Za-z0-9])")
_NINO_BAD_PREFIX = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def _nino_prefix_valid(prefix: str) -> bool:
    # HMRC never allocates D F I Q U V first, D F I O Q U V second, nor these pairs.
    p = prefix.upper()
    return p[0] not in "DFIQUV" and p[1] not in "DFIOQUV" and p not in _NINO_BAD_PREFIX


def is_uk_nino(value: str) -> bool:
    """A whole value that is a UK National Insurance number (``QQ 12 34 56 C``)."""
    m = _NINO.fullmatch(value.strip())
    return bool(m) and _nino_prefix_valid(m.group(1))


def find_uk_ninos(text: str) -> int:
    return sum(1 for m in _NINO.finditer(text) if _nino_prefix_valid(m.group(1)))


def is_national_id(value: str, *, bare_digits: bool = False) -> bool:
    return is_us_ssn(value, bare_digits=bare_digits) or is_uk_nino(value)


def find_national_ids(text: str) -> int:
    return find_us_ssns(text) + find_uk_ninos(text)


# ---------------------------------------------------------------- e-mail, phone

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}"
)


def is_email(value: str) -> bool:
    return "@" in value and _EMAIL.fullmatch(value.strip()) is not None


def find_emails(text: str) -> int:
    return sum(1 for _ in _EMAIL.finditer(text)) if "@" in text else 0


# International (+CC ...) or a separated national shape: "(555) 123-4567", "555-123-4567", "020 7946 0958".
_PHONE_INTL = re.compile(r"(?<![\w+])\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,4}\)?){2,5}(?![\w])")
_PHONE_NATIONAL = re.compile(r"\(?0?[0-9]{2,4}\)?[ .-][0-9]{3,4}[ .-]?[0-9]{3,4}")


def _phone_digits_ok(text: str) -> bool:
    return 8 <= sum(ch.isdigit() for ch in text) <= 15


def is_phone(value: str) -> bool:
    """A whole value shaped like a telephone number (E.164 with '+', or a national number with separators)."""
    v = value.strip()
    if not _phone_digits_ok(v):
        return False
    return bool(_PHONE_INTL.fullmatch(v) or _PHONE_NATIONAL.fullmatch(v))


def find_phones(text: str) -> int:
    # In free text only the international form: dates, versions and amounts look national.
    return sum(1 for m in _PHONE_INTL.finditer(text) if _phone_digits_ok(m.group()))


# ---------------------------------------------------------------- IBAN

# Lengths of the IBAN of some countries (ISO 13616 registry); others: 15..34 and the checksum.
_IBAN_LENGTHS = {
    "AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18, "FR": 27, "GB": 22,
    "GR": 27, "IE": 22, "IT": 27, "LU": 20, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "SE": 24,
}  # fmt: skip
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{1,4}){3,8}(?![A-Za-z0-9])")


def iban_valid(value: str) -> bool:
    """ISO 13616: country, two check digits, the account; the rearranged number mod 97 is 1."""
    v = value.replace(" ", "").upper()
    if not (15 <= len(v) <= 34) or not v.isascii() or not v.isalnum():
        return False
    if not (v[:2].isalpha() and v[2:4].isdigit()):
        return False
    if _IBAN_LENGTHS.get(v[:2], len(v)) != len(v):
        return False
    rearranged = v[4:] + v[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def is_iban(value: str) -> bool:
    return iban_valid(value.strip())


def find_ibans(text: str) -> int:
    return sum(1 for m in _IBAN.finditer(text) if iban_valid(m.group()))


# ---------------------------------------------------------------- health codes (ICD-10)

# ICD-10 (WHO and -CM): a letter, two digits (the third character may be a letter in -CM), then an
# optional '.' and up to four more characters: I10, E11.9, J45.909, S72.001A.
_ICD10 = re.compile(r"[A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?")
_ICD10_IN_TEXT = re.compile(r"(?i)\b(?:icd(?:-?10)?|diagnos[a-z]*|dx)\b\W{0,3}([A-Z][0-9][0-9A-Z]\.[0-9A-Z]{1,4})\b")


def is_icd10(value: str) -> bool:
    """A whole value shaped like an ICD-10 code (a shape, not a registry look-up: the scan asks for most
    of a column's values to match before it proposes anything)."""
    return _ICD10.fullmatch(value.strip()) is not None


def find_icd10(text: str) -> int:
    # Free text is full of letter-digit-digit tokens; a code counts only when introduced as one.
    low = text.lower()
    if "icd" not in low and "diagnos" not in low and "dx" not in low:
        return 0
    return sum(1 for _ in _ICD10_IN_TEXT.finditer(text))


# ---------------------------------------------------------------- the detector table


@dataclass(frozen=True)
class Detector:
    """One kind of regulated value: how to spot it whole and in text, and the data class it proposes.

    ``min_share``: the share of a column's sampled values that must match before
    the column is reported (1 value is enough for checksummed identifiers; loose
    shapes such as phone numbers and ICD-10 codes need most of the column).
    """

    name: str
    proposes: str
    whole: Callable[[str], bool]
    in_text: Callable[[str], int]
    min_share: float
    min_digits: int  # fewer digits in a value and the detector cannot match: skipped (the scan's hot path)


DETECTORS: tuple[Detector, ...] = (
    Detector("email", PERSONAL, is_email, find_emails, 0.0, 0),
    Detector("card-number", CARDHOLDER, is_card_number, find_card_numbers, 0.0, 13),
    Detector("national-id", PERSONAL, is_national_id, find_national_ids, 0.0, 6),
    Detector("health-code", HEALTH, is_icd10, find_icd10, 0.5, 1),  # C4A: one digit
    Detector("phone", PERSONAL, is_phone, find_phones, 0.5, 8),
    Detector("iban", FINANCIAL, is_iban, find_ibans, 0.0, 4),
)
_NOT_DIGIT = re.compile(r"[^0-9]+")


def detect(value: str, *, ssn_column: bool = False) -> set[str]:
    """The detectors that find something in one value (the whole of it, or somewhere in it).

    ``ssn_column``: the value comes from a column named for SSNs, where nine bare digits count.
    """
    found = set()
    digits = len(_NOT_DIGIT.sub("", value))
    for d in DETECTORS:
        if digits >= d.min_digits and (d.whole(value) or d.in_text(value) > 0):
            found.add(d.name)
    if ssn_column and "national-id" not in found and is_us_ssn(value, bare_digits=True):
        found.add("national-id")
    return found


def detect_text(text: str) -> set[str]:
    """The detectors that find something anywhere in a piece of free text (a file's head)."""
    digits = len(_NOT_DIGIT.sub("", text))
    return {d.name for d in DETECTORS if digits >= d.min_digits and d.in_text(text) > 0}


def reported(detector: Detector, matches: int, sampled: int) -> bool:
    """Whether ``matches`` of ``sampled`` values are enough to report the detector for one location."""
    return matches > 0 and matches >= detector.min_share * sampled


def detector(name: str) -> Detector:
    return next(d for d in DETECTORS if d.name == name)


# ---------------------------------------------------------------- names


# Words in a column, key, field or file name that say what it holds. Matched against whole
# tokens of the name ('customer_email' -> customer, email; 'cardNumber' -> card, number).
NAME_HINTS: dict[str, tuple[str, ...]] = {
    PERSONAL: (
        "email", "e_mail", "mail", "phone", "mobile", "telephone", "tel", "first_name", "firstname", "last_name",
        "lastname", "surname", "given_name", "family_name", "full_name", "fullname", "birth", "birthdate", "dob",
        "date_of_birth", "birthday", "address", "street", "postcode", "postal_code", "zip", "zipcode", "ssn",
        "passport", "national_id", "nino", "gender", "ip_address", "driver_license",
    ),
    CARDHOLDER: ("card_number", "cardnumber", "cc_number", "ccnum", "pan", "credit_card", "cvv", "cvc", "card_expiry",
                 "expiry_date", "cardholder"),
    HEALTH: ("diagnosis", "icd", "icd10", "icd_10", "medical", "patient", "patients", "prescription", "medication", "allergy",
             "allergies", "blood_type", "health", "treatment", "symptom", "symptoms"),
    FINANCIAL: ("iban", "bic", "swift", "account_number", "acct_no", "routing_number", "sort_code", "salary",
                "tax_id", "ledger", "invoice", "invoices", "payroll", "bank_account"),
}  # fmt: skip

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def name_tokens(name: str) -> list[str]:
    """Lower-case tokens of an identifier, and adjacent pairs joined by '_' ('cardNumber' -> card, number,
    card_number)."""
    words = [w for w in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", name).lower()) if w]
    return words + [f"{a}_{b}" for a, b in zip(words, words[1:], strict=False)]


def name_hint(name: str) -> str | None:
    """The data class a name suggests, or None (the first class in CLASS_ORDER wins)."""
    tokens = set(name_tokens(name))
    for cls in CLASS_ORDER:
        if tokens.intersection(NAME_HINTS[cls]):
            return cls
    return None


def ssn_named(name: str) -> bool:
    """A column named for SSNs: nine bare digits count there."""
    return bool(set(name_tokens(name)) & {"ssn", "social_security", "national_id"})
