"""Text from untrusted places (object keys, hence category names) made safe for where it is shown.

- CSV: a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is read as a formula by
  spreadsheet programs (OWASP, "CSV Injection"): such a cell gets a leading `'`, and so does such a
  character after a separator inside the cell (`,`, `;`, `|`, a tab), where another reader would split.
- Plots: matplotlib reads text between `$` signs as mathtext, and a bad expression raises while the
  figure is drawn: `$` is escaped.
HTML is escaped where the page is written (`report.write_report`).
"""

from __future__ import annotations

import re

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FORMULA_PATTERN = r"^[=+\-@\t\r]"
# A formula start after a separator some other reader may split on: `Apple,=1+2` in a `;`-separated
# file becomes a cell `=1+2` when opened comma-separated. Python's and Java's regex read it alike.
AFTER_SEPARATOR = r"([,;|\t])(?=[=+\-@\t\r])"  # a lookahead: `a\t\t=1` has two to neutralise


def csv_cell(text) -> str:
    text = re.sub(AFTER_SEPARATOR, r"\1'", str(text))
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def plot_label(text) -> str:
    return str(text).replace("$", r"\$")
