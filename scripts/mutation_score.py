"""Print the mutation score of the last ``mutmut run`` (``make mutants``), by package, and where the survivors are.

Score = (killed + timed out) / (mutants checked), as mutmut's own badge counts it; a run limited to some mutants
(``make mutants ONLY=...``) leaves the rest unchecked, so each package is scored on what was checked. Survivors are
grouped by function, so a run says where the tests are thin. Exits 0 whatever the score: the number is for reading.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

CAUGHT = {"killed", "timeout"}
CHECKED = CAUGHT | {"survived", "no tests", "suspicious", "segfault"}


def mutant_states() -> list[tuple[str, str]]:
    """``(mutant name, state)`` of every mutant mutmut knows, from ``mutmut results --all true``."""
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    listing = subprocess.run([mutmut, "results", "--all", "true"], check=True, capture_output=True, text=True).stdout
    states = [line.strip().rpartition(": ")[::2] for line in listing.splitlines()]
    return [(name, state) for name, state in states if "__mutmut_" in name]


def main() -> int:
    status: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    survivors: collections.Counter = collections.Counter()
    for name, state in mutant_states():
        package = ".".join(name.split(".")[:2])  # cblab_teach.core, cblab_teach.attention, ...
        status[package][state] += 1
        if state == "survived":
            survivors[name.split("__mutmut_")[0]] += 1
    for package, counts in sorted(status.items()):
        caught, checked = sum(counts[s] for s in CAUGHT), sum(counts[s] for s in CHECKED)
        score = f"{caught / checked:.1%}" if checked else "-"
        print(f"{package}: {sum(counts.values())} mutants, {checked} checked, score (killed + timed out) / checked "
              f"= {caught} / {checked} = {score}; " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    for name, count in survivors.most_common(25):
        print(f"  {count:4d} survived in {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
