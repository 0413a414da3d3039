"""Keeps the code the algorithm scripts share identical: one canonical text per block, copied into each script.

In a script a shared block sits between two marker lines, `# <shared NAME>` and `# </shared NAME>`; its
canonical text is tools/shared/NAME.py. `python tools/sync.py` rewrites every copy from that text;
`python tools/sync.py --check` changes nothing and exits 1, naming the block and the scripts, when a copy
differs or is missing (0 when all agree). Each script keeps its own copy so that it runs when copied alone.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "tools" / "shared"
ON_POLICY = ("ppo_continuous.py", "ppo_discrete.py", "a2c.py")
OFF_POLICY = ("dqn.py", "ddqn.py", "ddpg.py", "naf.py")
# Which scripts hold which block. A block of one family exists once per family, as its own canonical text.
BLOCKS = {
    "onpolicy_run": ON_POLICY,
    "offpolicy_run": OFF_POLICY,
    "replay_add": OFF_POLICY,  # ReplayBuffer.add, in Part 1
    "common": ON_POLICY + OFF_POLICY,
}
MARKED = re.compile(r"^# <shared (\w+)>\n(.*?)^# </shared \1>\n", re.MULTILINE | re.DOTALL)


def canonical(name: str) -> str:
    return (SHARED / f"{name}.py").read_text()


def sync(check: bool, root: Path = ROOT) -> int:
    problems = {}  # block -> scripts whose copy differs or is missing
    for script in sorted({s for scripts in BLOCKS.values() for s in scripts}):
        path = root / script
        text = path.read_text()
        found = {m.group(1) for m in MARKED.finditer(text)}
        for name, scripts in BLOCKS.items():
            if (script in scripts) != (name in found):
                state = "missing" if script in scripts else "unexpected"
                problems.setdefault(name, []).append(f"{script} (marker {state})")
        new = MARKED.sub(lambda m: f"# <shared {m.group(1)}>\n{canonical(m.group(1))}# </shared {m.group(1)}>\n"
                         if m.group(1) in BLOCKS else m.group(0), text)
        for m, n in zip(MARKED.finditer(text), MARKED.finditer(new)):
            if m.group(2) != n.group(2):
                problems.setdefault(m.group(1), []).append(script)
        if not check and new != text:
            path.write_text(new)
    if not check:
        for name, scripts in problems.items():
            if any("marker" in s for s in scripts):
                print(f"shared block '{name}': {', '.join(s for s in scripts if 'marker' in s)}")
    if check and problems:
        for name, scripts in problems.items():
            print(f"shared block '{name}' (tools/shared/{name}.py) differs in: {', '.join(scripts)}")
        print("run `python tools/sync.py` to rewrite the copies from tools/shared/ (edit the block there)")
        return 1
    if check:
        lines = sum(canonical(name).count("\n") * len(scripts) for name, scripts in BLOCKS.items())
        print(f"{len(BLOCKS)} shared blocks agree in every script ({lines} lines guarded)")
    return 0


if __name__ == "__main__":
    sys.exit(sync(check="--check" in sys.argv[1:]))
