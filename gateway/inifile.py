"""The INI reader under :mod:`gateway.config`: configparser's syntax, with line numbers.

configparser forgets where each section and key was written, and its strict
mode stops at the first duplicate. :func:`scan` restates its syntax to map
every section and key to its line and to report every duplicate, and
:func:`parse` runs configparser (strict, then lenient to check the rest),
turning its exceptions into :class:`Problems`: ``FILE:LINE [section] key:
what is wrong``, once each, in line order. Pure: text in, findings out.
"""

from __future__ import annotations

import configparser
import io
import re
import sys
from dataclasses import dataclass, field

__all__ = ["Lines", "Problems", "parse", "scan"]

# configparser's syntax, restated so that line numbers can be recovered: it
# forgets them.  Delimiter "=" only, because endpoint strings contain ":".
_SECTION_HEADER = re.compile(r"\[(?P<header>.+)\]")
_OPTION = re.compile(r"(?P<option>.*?)\s*=\s*(?P<value>.*)$")
_COMMENT = re.compile(r"(?:^|(?<=\s))[#;]")
_NO_DEFAULT_SECTION = "\n"  # configparser's [DEFAULT] magic, made unreachable
_LINE_FORMS = "allowed: key = value, [kind:NAME], or a comment starting with # or ;"


class Problems:
    """Collects problems for one source, once each, reported in line order."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._lines: dict[str, int] = {}

    def add(self, line: int, section: str, key: str, message: str) -> None:
        """Record ``FILE:LINE [section] key: message``."""
        text = f"{self.source}:{line} [{section}] {key}: {message}"
        self._lines.setdefault(text, line)

    def found(self) -> list[str]:
        """Every problem recorded, in line order."""
        return sorted(self._lines, key=self._lines.__getitem__)


@dataclass
class Lines:
    """Where each section and key was first written, and which section owns a line."""

    sections: dict[str, int] = field(default_factory=dict)
    keys: dict[tuple[str, str], int] = field(default_factory=dict)
    owners: dict[int, str] = field(default_factory=dict)

    def of(self, section: str, key: str | None = None) -> int:
        """The key's line, else its section header's line (0 if unknown)."""
        if key is not None and (section, key) in self.keys:
            return self.keys[section, key]
        return self.sections.get(section, 0)


def scan(text: str, problems: Problems) -> Lines:
    """Map sections and keys to line numbers the way configparser reads them.

    Also reports every duplicate section and key: configparser's strict mode
    stops at the first one.
    """
    lines = Lines()
    section: str | None = None
    in_value = False
    indent_level = sys.maxsize
    for number, line in enumerate(io.StringIO(text), start=1):
        value = _COMMENT.split(line, maxsplit=1)[0].strip()
        if not value:
            indent_level = sys.maxsize  # a blank line ends a multi-line value
            continue
        indent = len(line) - len(line.lstrip())
        if section is not None and in_value and indent > indent_level:
            lines.owners[number] = section  # continuation of the previous value
            continue
        indent_level = indent
        header = _SECTION_HEADER.match(value)
        if header:
            section, in_value = header.group("header"), False
            lines.owners[number] = section
            if section in lines.sections:
                first = lines.sections[section]
                message = f"duplicate section; first at line {first}"
                problems.add(number, section, "-", message)
            else:
                lines.sections[section] = number
            continue
        if section is None:
            break  # configparser reports the missing section header
        lines.owners[number] = section
        option = _OPTION.match(value)
        if option:
            key = option.group("option").rstrip().lower()
            in_value = bool(key)
            if key and (section, key) in lines.keys:
                first = lines.keys[section, key]
                problems.add(number, section, key, f"duplicate key; first at line {first}")
            elif key:
                lines.keys[section, key] = number
    return lines


def parse(
    text: str, source: str, lines: Lines, problems: Problems
) -> configparser.ConfigParser | None:
    """Parse with configparser, turning its exceptions into problems.

    Strict mode raises at the first duplicate; the scan has already reported
    them all, so the text is then read again leniently to check the rest.
    """
    for strict in (True, False):
        parser = configparser.ConfigParser(
            interpolation=None,
            strict=strict,
            delimiters=("=",),
            comment_prefixes=("#", ";"),
            inline_comment_prefixes=("#", ";"),
            empty_lines_in_values=False,
            default_section=_NO_DEFAULT_SECTION,
        )
        try:
            parser.read_string(text, source)
        except configparser.DuplicateSectionError as exc:
            first = lines.sections.get(exc.section, 0)
            message = f"duplicate section; first at line {first}"
            problems.add(exc.lineno or 0, exc.section, "-", message)
            continue
        except configparser.DuplicateOptionError as exc:
            message = f"duplicate key; first at line {lines.of(exc.section, exc.option)}"
            problems.add(exc.lineno or 0, exc.section, exc.option, message)
            continue
        except configparser.MissingSectionHeaderError as exc:
            message = f"{exc.line.strip()!r} is outside any section; allowed: a header first"
            problems.add(exc.lineno, "*", "-", message)
            return None
        except configparser.ParsingError as exc:
            text_lines = text.split("\n")
            for number, _ in exc.errors:
                shown = text_lines[number - 1].strip()
                owner = lines.owners.get(number, "*")
                problems.add(number, owner, "-", f"cannot parse {shown!r}; {_LINE_FORMS}")
        return parser
    return None  # unreachable: the lenient pass raises no duplicate errors
