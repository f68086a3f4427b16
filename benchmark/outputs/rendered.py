"""A table as people read it, shared by every table writer (main, question and efficiency tables)."""

from __future__ import annotations

from dataclasses import dataclass

from tabulate import tabulate


@dataclass
class RenderedTable:
    """A table as people read it: what the console prints and the report renders as Markdown."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    footnotes: list[str]

    def show(self, echo, rendered: list | None = None) -> None:
        """Print it for the console, and append it to `rendered` (what the report shows) when given."""
        echo("\n" + self.title)
        echo(tabulate(self.rows, headers=self.headers, tablefmt="github", disable_numparse=True))
        for note in self.footnotes:
            echo(note)
        if rendered is not None:
            rendered.append(self)

    def markdown(self) -> list[str]:
        return [f"**{self.title}**", "", tabulate(self.rows, headers=self.headers, tablefmt="github", disable_numparse=True),
                "", *[f"- {note}" for note in self.footnotes], ""]


def caption(experiment, what: str, spread: str | None = None) -> str:
    """A table's caption (LaTeX): the experiment, what the table shows, the spread and the protocol."""
    protocol = {"clean": "clean protocol: abnormal reference removed from the queries",
                "official": "official NAGL protocol: type-matched abnormal reference kept in the test set"}[experiment.protocol]
    prefix = "REHEARSAL, not results: " if experiment.rehearsal else ""
    seeds = ", ".join(map(str, experiment.seeds))
    if spread is None:
        spread = f"mean $\\pm$ std over seeds {seeds}" if len(experiment.seeds) > 1 else f"seed {seeds} (one seed: no spread)"
    return f"{prefix}{experiment.name}: {what}, AUROC (\\%), {spread}; {protocol}."
