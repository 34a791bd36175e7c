"""Scoring phase predictions as the Cholec80 literature does (`protocols`), and the prediction
files that carry them between tools (`phase_files`). Plain numpy: no torch, no cluster packages."""
