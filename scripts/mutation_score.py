"""Print the mutation score of the last ``mutmut run`` (``make mutants``), and where the survivors are.

Score = (killed + timed out) / (mutants tested), as mutmut's own badge counts it. Survivors are grouped by
function, so a run says where the tests are thin. Exits 0 whatever the score: the number is for reading.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

STATS = Path("mutants/mutmut-cicd-stats.json")


def main() -> int:
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    subprocess.run([mutmut, "export-cicd-stats"], check=True, capture_output=True)
    s = json.loads(STATS.read_text())
    caught = s["killed"] + s["timeout"]
    # a run limited to some mutants (mutmut run "pattern") leaves the rest unchecked: score what was checked
    tested = caught + s["survived"] + s["no_tests"] + s["suspicious"] + s["segfault"]
    print(f"mutants {s['total']}: killed {s['killed']}, timed out {s['timeout']}, survived {s['survived']}, "
          f"no test {s['no_tests']}, not checked {s['total'] - tested - s['skipped']}, skipped {s['skipped']}")
    print(f"score (killed + timed out) / checked = {caught} / {tested} = {caught / max(tested, 1):.1%}")
    listing = subprocess.run([mutmut, "results"], check=True, capture_output=True, text=True).stdout
    by_function = collections.Counter(
        line.split("__mutmut_")[0].strip() for line in listing.splitlines() if ": survived" in line
    )
    for name, count in by_function.most_common(25):
        print(f"  {count:4d} survived in {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
