"""docs/configuration.md agrees with the loader's key tables, both ways.

The docs hold one table per section kind under a ``## [kind...]`` heading, with
columns key | type | default | example | reload | description.  The keys, types
and defaults come from ``gateway.config.SECTION_KEYS``, not from a list here.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.config import SECTION_KEYS, SINGLE_KINDS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
_HEADING = re.compile(r"## \[(?P<kind>[a-z]+)(?::NAME)?\]\s*$")
_CELL_SEPARATOR = re.compile(r"(?<!\\)\|")
COLUMNS = ["key", "type", "default", "example", "reload", "description"]


def _unquote(cell: str) -> str:
    """A cell's text without surrounding backticks and with ``\\|`` unescaped."""
    cell = cell.strip().replace("\\|", "|")
    return cell[1:-1] if cell.startswith("`") and cell.endswith("`") else cell


def documented() -> dict[str, dict[str, dict[str, str]]]:
    """kind -> key -> column -> text, from every key table in the docs."""
    tables: dict[str, dict[str, dict[str, str]]] = {}
    kind = None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        heading = _HEADING.match(line)
        if heading:
            kind = heading.group("kind")
            tables.setdefault(kind, {})
        elif line.startswith("## "):
            kind = None
        elif kind and line.startswith("| `"):
            cells = [_unquote(c) for c in _CELL_SEPARATOR.split(line.strip())[1:-1]]
            row = dict(zip(COLUMNS, cells, strict=True))
            if row["key"] in tables[kind]:
                raise AssertionError(f"[{kind}] {row['key']} is documented twice")
            tables[kind][row["key"]] = row
    return tables


class ConfigurationDocsTests(SynchronousTestCase):
    """Every key the loader accepts is documented, and only those."""

    def setUp(self) -> None:
        self.docs = documented()

    def test_every_kind_has_a_heading(self) -> None:
        """Each section kind has its own ``## [kind]`` heading."""
        self.assertEqual(set(self.docs), set(SECTION_KEYS))

    def test_keys_match(self) -> None:
        """The documented keys of each kind are exactly the keys the loader accepts.

        ``[defaults]`` is documented in prose: its keys are the listener and
        backend keys, whose rows are checked under their own headings.
        """
        for kind, table in SECTION_KEYS.items():
            expected = set() if kind == "defaults" else set(table)
            self.assertEqual(set(self.docs[kind]), expected, kind)

    def test_defaults_match(self) -> None:
        """Each documented default is the loader's default, spelt by its parser."""
        for kind, rows in self.docs.items():
            for key, row in rows.items():
                spec = SECTION_KEYS[kind][key]
                shown = "required" if spec.required else spec.parser.show(spec.default)
                self.assertEqual(row["default"], shown, f"[{kind}] {key}")

    def test_types_match(self) -> None:
        """Each documented type starts with the name of the key's value type."""
        for kind, rows in self.docs.items():
            for key, row in rows.items():
                type_name = SECTION_KEYS[kind][key].parser.type_name
                self.assertEqual(row["type"].split()[0], type_name, f"[{kind}] {key}")

    def test_examples_parse(self) -> None:
        """Each documented example is a value the loader accepts."""
        for kind, rows in self.docs.items():
            for key, row in rows.items():
                SECTION_KEYS[kind][key].parser.parse(row["example"])

    def test_reload(self) -> None:
        """Every key reloads except a listener's kind (in one process) and a demo's bind."""
        restart = {
            ("listener", "tls"),
            ("listener", "redirect_https"),
            ("demo", "bind"),
        }
        for kind, rows in self.docs.items():
            for key, row in rows.items():
                needs_restart = (kind, key) in restart
                self.assertEqual(
                    row["reload"], "no (restart)" if needs_restart else "yes", f"[{kind}] {key}"
                )

    def test_single_kinds(self) -> None:
        """Sections written without a name are documented without one."""
        text = DOCS.read_text(encoding="utf-8")
        for kind in SECTION_KEYS:
            heading = f"## [{kind}]" if kind in SINGLE_KINDS else f"## [{kind}:NAME]"
            self.assertIn(heading + "\n", text)
