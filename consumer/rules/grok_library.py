"""Grok pattern names for ES|QL's GROK, with the meaning of Elastic's ECS v1 library.

ES|QL compiles GROK with ``GrokBuiltinPatterns.get(true)``, the ECS-compatibility (v1) pattern
set. The definitions below are written here from the documented meaning of each name (what a
WORD, an IPv4 address or an ISO 8601 timestamp is), not copied from Elastic's pattern files,
and cover the general-purpose names of its ``grok-patterns`` file. A name missing here is
refused at compile time ("Unable to find pattern [X]"), never guessed.
"""

from __future__ import annotations

from typing import Final

_HEX4: Final = "[0-9A-Fa-f]{1,4}"
_OCTET: Final = "(?:25[0-5]|2[0-4][0-9]|[0-1]?[0-9]{1,2})"
_DOTTED: Final = f"{_OCTET}(?:\\.{_OCTET}){{3}}"


def _ipv6() -> str:
    """The textual IPv6 forms of RFC 4291 section 2.2 (full, compressed with '::', and with an
    embedded IPv4 tail), optionally followed by a '%zone'."""
    h = _HEX4
    forms = [
        f"(?:{h}:){{7}}(?:{h}|:)",
        f"(?:{h}:){{6}}(?::{h}|{_DOTTED}|:)",
        f"(?:{h}:){{5}}(?:(?::{h}){{1,2}}|:{_DOTTED}|:)",
        f"(?:{h}:){{4}}(?:(?::{h}){{1,3}}|(?::{h})?:{_DOTTED}|:)",
        f"(?:{h}:){{3}}(?:(?::{h}){{1,4}}|(?::{h}){{0,2}}:{_DOTTED}|:)",
        f"(?:{h}:){{2}}(?:(?::{h}){{1,5}}|(?::{h}){{0,3}}:{_DOTTED}|:)",
        f"(?:{h}:){{1}}(?:(?::{h}){{1,6}}|(?::{h}){{0,4}}:{_DOTTED}|:)",
        f":(?:(?::{h}){{1,7}}|(?::{h}){{0,5}}:{_DOTTED}|:)",
    ]
    return "(?:" + "|".join(f"(?:{f})" for f in forms) + ")(?:%.+)?"


_EMAIL_CHARS: Final = "[a-zA-Z0-9!#$%&'*+\\-/=?^_`{|}~]"
_LABEL: Final = "[0-9A-Za-z][0-9A-Za-z-]{0,62}"

ECS_V1: Final[dict[str, str]] = {
    # words and runs
    "WORD": "\\b\\w+\\b",
    "NOTSPACE": "\\S+",
    "SPACE": "\\s*",
    "DATA": ".*?",
    "GREEDYDATA": ".*",
    "USERNAME": "[a-zA-Z0-9._-]+",
    "USER": "%{USERNAME}",
    "UUID": "[A-Fa-f0-9]{8}-(?:[A-Fa-f0-9]{4}-){3}[A-Fa-f0-9]{12}",
    # numbers: a decimal number is not taken from the middle of another one
    "INT": "[+-]?[0-9]+",
    "BASE10NUM": "(?<![0-9.+-])(?>[+-]?(?:[0-9]+(?:\\.[0-9]+)?|\\.[0-9]+))",
    "NUMBER": "%{BASE10NUM}",
    "BASE16NUM": "(?<![0-9A-Fa-f])[+-]?(?:0x)?[0-9A-Fa-f]+",
    "POSINT": "\\b[1-9][0-9]*\\b",
    "NONNEGINT": "\\b[0-9]+\\b",
    # network
    "EMAILLOCALPART": f"{_EMAIL_CHARS}{{1,64}}(?:\\.{_EMAIL_CHARS}{{1,62}}){{0,63}}",
    "EMAILADDRESS": "%{EMAILLOCALPART}@%{HOSTNAME}",
    # a trailing "optional dot, or a word boundary" adds nothing to an optional dot: the
    # boundary branch matches the same empty string at the same place, so it never decides
    "HOSTNAME": f"\\b{_LABEL}(?:\\.{_LABEL})*\\.?",
    "IPV4": f"(?<![0-9]){_DOTTED}(?![0-9])",
    "IPV6": _ipv6(),
    "IP": "(?:%{IPV6}|%{IPV4})",
    "IPORHOST": "(?:%{IP}|%{HOSTNAME})",
    "HOSTPORT": "%{IPORHOST}:%{POSINT}",
    "CISCOMAC": "(?:[A-Fa-f0-9]{4}\\.){2}[A-Fa-f0-9]{4}",
    "WINDOWSMAC": "(?:[A-Fa-f0-9]{2}-){5}[A-Fa-f0-9]{2}",
    "COMMONMAC": "(?:[A-Fa-f0-9]{2}:){5}[A-Fa-f0-9]{2}",
    "MAC": "(?:%{CISCOMAC}|%{WINDOWSMAC}|%{COMMONMAC})",
    # dates and times
    "MONTH": (
        "\\b(?:[Jj]an(?:uary|uar)?|[Ff]eb(?:ruary|ruar)?|[Mm](?:a|ä)?r(?:ch|z)?|[Aa]pr(?:il)?|"
        "[Mm]a(?:y|i)?|[Jj]un(?:e|i)?|[Jj]ul(?:y|i)?|[Aa]ug(?:ust)?|[Ss]ep(?:tember)?|"
        "[Oo](?:c|k)?t(?:ober)?|[Nn]ov(?:ember)?|[Dd]e(?:c|z)(?:ember)?)\\b"
    ),
    "MONTHNUM": "(?:0?[1-9]|1[0-2])",
    "MONTHNUM2": "(?:0[1-9]|1[0-2])",
    "MONTHDAY": "(?:0[1-9]|[12][0-9]|3[01]|[1-9])",
    "DAY": (
        "(?:Mon(?:day)?|Tue(?:sday)?|Wed(?:nesday)?|Thu(?:rsday)?|Fri(?:day)?|"
        "Sat(?:urday)?|Sun(?:day)?)"
    ),
    "YEAR": "(?>\\d\\d){1,2}",
    "HOUR": "(?:2[0123]|[01]?[0-9])",
    "MINUTE": "(?:[0-5][0-9])",
    "SECOND": "(?:(?:[0-5]?[0-9]|60)(?:[:.,][0-9]+)?)",
    "TIME": "%{HOUR}:%{MINUTE}(?::%{SECOND})(?![0-9])",
    "DATE_US": "%{MONTHNUM}[/-]%{MONTHDAY}[/-]%{YEAR}",
    "DATE_EU": "%{MONTHDAY}[./-]%{MONTHNUM}[./-]%{YEAR}",
    "ISO8601_TIMEZONE": "(?:Z|[+-]%{HOUR}(?::?%{MINUTE}))",
    "ISO8601_SECOND": "%{SECOND}",
    "TIMESTAMP_ISO8601": (
        "%{YEAR}-%{MONTHNUM}-%{MONTHDAY}[T ]%{HOUR}:?%{MINUTE}(?::?%{SECOND})?%{ISO8601_TIMEZONE}?"
    ),
    "DATE": "%{DATE_US}|%{DATE_EU}",
    "DATESTAMP": "%{DATE}[- ]%{TIME}",
    "TZ": "(?:[APMCE][SD]T|UTC)",
    "HTTPDATE": "%{MONTHDAY}/%{MONTH}/%{YEAR}:%{TIME} %{INT}",
    "SYSLOGTIMESTAMP": "%{MONTH} +%{MONTHDAY} %{TIME}",
    "LOGLEVEL": (
        "(?:[Aa]lert|ALERT|[Tt]race|TRACE|[Dd]ebug|DEBUG|[Nn]otice|NOTICE|[Ii]nfo?(?:rmation)?|"
        "INFO?(?:RMATION)?|[Ww]arn?(?:ing)?|WARN?(?:ING)?|[Ee]rr?(?:or)?|ERR?(?:OR)?|"
        "[Cc]rit?(?:ical)?|CRIT?(?:ICAL)?|[Ff]atal|FATAL|[Ss]evere|SEVERE|EMERG(?:ENCY)?|"
        "[Ee]merg(?:ency)?)"
    ),
}
