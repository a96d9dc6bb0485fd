"""Give mutmut the tests of the functions that run only inside spawned ranks, and name their unchecked mutants.

mutmut learns which tests reach a function by recording calls in the pytest process, so a function that runs
only in a rank started by ``torch.multiprocessing`` (a gloo worker) looks reached by no test ("no tests") and is
never checked. The ranks do run the mutant: they are spawned with the parent's ``sys.path`` (mutmut's copy of the
package) and environment (``MUTANT_UNDER_TEST``). So each such function gets the tests of the launcher that spawns
it, written into mutmut's stats, and this prints the mutants to re-check (``make mutants`` runs them next).
Run it after a ``mutmut run`` has collected stats; a run that re-collects every test's stats drops the entries,
and the next ``make mutants`` writes them again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mutation_score import mutant_states  # scripts/ is on sys.path when run as a script

STATS = Path("mutants/mutmut-stats.json")
DISTRIBUTED, DISAGGREGATED = "cblab_teach.advanced.distributed.x_", "cblab_teach.advanced.disaggregated.x_"
# function run only in spawned ranks -> the launchers whose tests spawn them (mutmut's mangled names)
SPAWNED_BY = {
    DISTRIBUTED + "_worker": [DISTRIBUTED + "run_distributed"],
    **{DISAGGREGATED + f: [DISAGGREGATED + "run_two_processes"]
       for f in ("_worker", "_prefill_rank", "_decode_rank", "_send_handoff", "_recv_handoff")},
    "cblab_teach.advanced.processes.x_init_group": [DISTRIBUTED + "run_distributed", DISAGGREGATED + "run_two_processes"],
}  # fmt: skip


def main() -> int:
    if not STATS.exists():
        print("no mutmut stats yet: run `make mutants` first", file=sys.stderr)
        return 1
    stats = json.loads(STATS.read_text())
    tests = stats["tests_by_mangled_function_name"]
    for function, launchers in SPAWNED_BY.items():
        reached = sorted({t for launcher in launchers for t in tests.get(launcher, [])})
        if not reached:
            print(f"no test reaches the launchers of {function}", file=sys.stderr)
            return 1
        tests[function] = reached
    STATS.write_text(json.dumps(stats, indent=4))
    for name, state in mutant_states():
        if state in ("no tests", "not checked") and name.split("__mutmut_")[0] in SPAWNED_BY:
            print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
