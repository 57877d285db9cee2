"""The recorded full-size runs of the recipes and the docs made from them.

Each recipe's last full-size run (or its largest size that fits a CPU, where the full one needs a GPU) is recorded
as its claims.csv in ``docs/results/claims/<name>.csv``. From these records, and nothing typed by hand,
``iclab reproduce --list`` prints each recipe's counts, docs/results.md gets its paper-vs-iclab table and each
recipe page (docs/results/<name>.md) its claims table, between ``<!-- … -->`` markers
(``python -m iclab.experiments.records`` rewrites them; a test checks they are current).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from iclab.experiments.claims import counts_of
from iclab.experiments.recipe import Recipe, all_recipes

DOCS = Path(__file__).resolve().parents[3] / "docs"  # the checkout's docs/ (an editable or source install)
TABLE_START, TABLE_END = "<!-- paper-vs-iclab:start -->\n", "<!-- paper-vs-iclab:end -->"
CLAIMS_START, CLAIMS_END = "<!-- claims:start -->\n", "<!-- claims:end -->"


def record_path(name: str, docs: Path = DOCS) -> Path:
    return docs / "results" / "claims" / f"{name}.csv"


def recorded_claims(name: str, docs: Path = DOCS) -> pd.DataFrame | None:
    """The recorded claims.csv of recipe ``name``, or None where there is none."""
    path = record_path(name, docs)
    return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.is_file() else None


def _run_text(frame: pd.DataFrame) -> str:
    seeds = str(frame["seed_list"].iloc[0]).replace(",", ", ")
    return f"{frame['size'].iloc[0]} size, seeds {seeds}"


def recorded_counts(name: str, docs: Path = DOCS) -> str:
    """One line: the counts of the recipe's recorded run, with its size and seeds."""
    frame = recorded_claims(name, docs)
    if frame is None:
        return "no recorded run (docs/results/claims/ is not beside this install, or has none for it)"
    return f"recorded ({_run_text(frame)}): {counts_of(frame).text()}"


def paper_table(recipes: list[Recipe] | None = None, docs: Path = DOCS) -> str:
    """docs/results.md's table: one row per recipe with its recorded run's size and seeds, the counts, the
    claims not reproduced (by their words) and a link to its page."""
    rows = ["| recipe | paper | recorded run | paper claims | theory checks | not reproduced | page |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for recipe in recipes or all_recipes():
        frame = recorded_claims(recipe.name, docs)
        if frame is None:
            rows.append(f"| `{recipe.name}` | {recipe.paper} | none | — | — | — | — |")
            continue
        counts = counts_of(frame)
        paper = f"{counts.reproduced} of {counts.paper_total} reproduced"
        if counts.not_tested:
            paper += f", {counts.not_tested} not tested"
        theory = f"{counts.theory_held} of {counts.theory_total} hold" if counts.theory_total else "—"
        failed = frame[frame["status"].isin(["not reproduced", "not discriminating"])]
        missing = "; ".join(f"{r.claim} ({r.status})" for r in failed.itertuples()) or "none"
        rows.append(f"| `{recipe.name}` | {recipe.paper} | {_run_text(frame)} | {paper} | {theory} | "
                    f"{_cell(missing)} | [page](results/{recipe.name}.md) |")  # fmt: skip
    return "\n".join(rows) + "\n"


def claims_table(name: str, docs: Path = DOCS) -> str:
    """A recipe page's table of its recorded claims: place, kind, claim, iclab's value per seed, test, seeds,
    verdict; the counts above it."""
    frame = recorded_claims(name, docs)
    if frame is None:
        return "No recorded run.\n"
    lines = [f"Recorded run: {_run_text(frame)}. **{counts_of(frame).text()}.**", "",
             "| place | kind | claim | iclab (per seed) | test | controls | verdict |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in frame.itertuples():
        cells = [r.place, r.kind, r.claim, r.shown or "—", r.test or "—", r.controls or "—", r.verdict]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def replace_block(text: str, start: str, end: str, block: str) -> str:
    """``text`` with what lies between the ``start`` and ``end`` markers replaced by ``block``; raises
    ValueError when a marker is missing."""
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), flags=re.S)
    if not pattern.search(text):
        raise ValueError(f"the markers {start.strip()} … {end} are missing")
    return pattern.sub(lambda _: start + block + end, text, count=1)


def write_docs(docs: Path = DOCS) -> list[Path]:
    """Rewrite docs/results.md's table and every recipe page's claims table from the records; returns the files
    rewritten."""
    written = []
    results = docs / "results.md"
    results.write_text(replace_block(results.read_text(), TABLE_START, TABLE_END, paper_table(docs=docs)))
    written.append(results)
    for recipe in all_recipes():
        page = docs / "results" / f"{recipe.name}.md"
        if page.is_file() and CLAIMS_START in page.read_text():
            page.write_text(replace_block(page.read_text(), CLAIMS_START, CLAIMS_END, claims_table(recipe.name, docs)))
            written.append(page)
    return written


if __name__ == "__main__":
    for path in write_docs():
        print(f"rewrote {path}")
