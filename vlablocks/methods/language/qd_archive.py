"""The MAP-Elites archive: one elite (the fittest candidate seen) per cell of a descriptor grid.

MAP-Elites (Mouret & Clune, 2015) keeps, for every cell c of a grid over behaviour descriptors b(x),

    elite(c) = argmax_{x evaluated, b(x) = c} f(x)

and reports coverage = |{c filled}| / |grid| and the QD score = sum over filled cells of f(elite(c)). A
candidate replaces the incumbent only when strictly fitter, so the first of equally fit candidates stays.
Entries are plain JSON dicts ({"cell": [row, column], "fitness", "text", ...}): the archive is saved and
loaded as JSON, never pickled.
"""

from __future__ import annotations

import numpy as np


class Archive:
    """shape: (rows, columns) of the descriptor grid; entries keyed by cell (row, column)."""

    def __init__(self, shape: tuple[int, int], entries: list[dict] | None = None) -> None:
        self.shape = tuple(shape)
        self.cells: dict[tuple[int, int], dict] = {}
        for entry in entries or []:
            self.insert(entry)

    def insert(self, entry: dict) -> bool:
        """Keeps `entry` if its cell is empty or it is strictly fitter than the cell's elite -> kept?"""
        cell = tuple(entry["cell"])
        if not all(0 <= c < n for c, n in zip(cell, self.shape)):
            raise ValueError(f"cell {cell} is outside the archive's grid {self.shape}")
        incumbent = self.cells.get(cell)
        if incumbent is not None and entry["fitness"] <= incumbent["fitness"]:
            return False
        self.cells[cell] = {**entry, "cell": list(cell)}
        return True

    def elites(self) -> list[dict]:
        """The elites in cell order."""
        return [self.cells[cell] for cell in sorted(self.cells)]

    def stats(self) -> dict:
        fitness = [entry["fitness"] for entry in self.cells.values()]
        return {
            "filled": len(fitness),
            "coverage": len(fitness) / (self.shape[0] * self.shape[1]),
            "qd_score": float(sum(fitness)),
            "max_fitness": float(max(fitness, default=0.0)),
            "mean_fitness": float(np.mean(fitness)) if fitness else 0.0,
        }

    def fitness_grid(self) -> np.ndarray:
        """[rows, columns] elite fitness, NaN where a cell is empty."""
        grid = np.full(self.shape, np.nan)
        for (row, column), entry in self.cells.items():
            grid[row, column] = entry["fitness"]
        return grid

    def plot(self, path, row_labels: list[str], column_labels: list[str], title: str) -> None:
        """Heat map of the elites' fitness (empty cells blank), each filled cell annotated with its value."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        grid = self.fitness_grid()
        fig, ax = plt.subplots(figsize=(1.0 + 0.62 * self.shape[1], 1.6 + 0.55 * self.shape[0]))
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
        for (row, column), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7, color="tab:cyan")
        ax.set_xticks(range(self.shape[1]), column_labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(self.shape[0]), row_labels, fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, label="failure rate of the elite")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
