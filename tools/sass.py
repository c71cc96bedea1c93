#!/usr/bin/env python3
"""sass.py - the machine code (SASS) of the CUDA kernels a build compiled, counted without a GPU:
per kernel its instructions, their mix by opcode and its loops (each backward branch: the
instructions from its target to it, one pass of the loop as laid out, every path included).
Static counts, not a measurement: they say what a change did to the code (a cut of N instructions
a block, a new spill), the harness says what it did to the time (docs/perf-notes.md, session 58).

usage: sass.py [OBJECT ...] [-k REGEX] [--arch sm_90a] [--mix] [--loops] [--dump] [--against OLD]
  OBJECT   object files or binaries with device code (default: build*/CMakeFiles/tmkernels.dir/
           kernels/cuda/*.o, the newest build directory's)
  -k       only kernels whose mangled or demangled name matches REGEX (re.search)
  --mix    the opcode mix of each kernel (opcode without modifiers: IMMA, LDS, LOP3, ...)
  --loops  each backward branch of each kernel: its target, itself and the instructions between
  --dump   the kernel's SASS as cuobjdump prints it
  --against OLD
           each kernel against the one of the same name in OLD (another build's object): the same
           code instruction for instruction, or its count and opcode mix changed by how much, or
           found on one side only. What says a measured build's figures hold for another one: a
           kernel whose code is the same runs the same (session 59 merged a change that way).

Needs cuobjdump and nvdisasm: on PATH, in /usr/local/cuda/bin, or installed here on first use from
PyPI (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm) into ~/.cache/tensormesh/cuda-tools; nvcc's
package alone does not ship them.
"""
import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys

TOOLS_DIR = os.path.expanduser("~/.cache/tensormesh/cuda-tools")
INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]+)?\b(.*?);")
FUNCTION = re.compile(r"^\s*Function : (\S+)")
BRANCH_TARGET = re.compile(r"\b(?:BRA|BRX|JMP)\b[^;]*?0x([0-9a-f]+)")


def find_tool(name):
    """The path of a CUDA binary tool, installing the PyPI wheels that carry it if it is nowhere."""
    for candidate in (shutil.which(name), f"/usr/local/cuda/bin/{name}", *glob.glob(f"{TOOLS_DIR}/nvidia/*/bin/{name}")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    print(f"sass.py: {name} not found; installing nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm into {TOOLS_DIR}",
          file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", TOOLS_DIR, "nvidia-cuda-cuobjdump",
                    "nvidia-cuda-nvdisasm"], check=True)
    found = glob.glob(f"{TOOLS_DIR}/nvidia/*/bin/{name}")
    if not found:
        sys.exit(f"sass.py: {name} is not in the installed wheels ({TOOLS_DIR})")
    os.chmod(found[0], 0o755)
    return found[0]


def default_objects():
    objects = []
    for build in sorted(glob.glob("build*/"), key=os.path.getmtime, reverse=True):
        objects = sorted(glob.glob(f"{build}CMakeFiles/tmkernels.dir/kernels/cuda/*.o"))
        if objects:
            return objects
    sys.exit("sass.py: no build*/CMakeFiles/tmkernels.dir/kernels/cuda/*.o here; name the objects")


def kernels_of(path, arch):
    """{mangled name: [(address, opcode, text)]} of one object's code for `arch`."""
    cuobjdump = find_tool("cuobjdump")
    env = dict(os.environ, PATH=os.path.dirname(find_tool("nvdisasm")) + os.pathsep + os.environ.get("PATH", ""))
    run = subprocess.run([cuobjdump, "-sass", "-arch", arch, path], capture_output=True, text=True, env=env)
    if run.returncode:
        sys.exit(f"sass.py: cuobjdump failed on {path}: {run.stderr.strip()}")
    return parse_sass(run.stdout)


def parse_sass(text):
    """{mangled name: [(address, opcode, text)]} of cuobjdump -sass output."""
    kernels, current = {}, None
    for line in text.splitlines():
        m = FUNCTION.match(line)
        if m:
            current = kernels.setdefault(m.group(1), [])
            continue
        m = INSTRUCTION.match(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(3), line.split(";")[0].strip()))
    return kernels


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return dict(zip(names, out.splitlines()))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def loops(code):
    """(target, branch, instructions from target to branch) of each backward branch."""
    index = {address: i for i, (address, _, _) in enumerate(code)}
    found = []
    for i, (address, opcode, text) in enumerate(code):
        m = BRANCH_TARGET.search(text)
        if opcode in ("BRA", "BRX", "JMP") and m:
            target = int(m.group(1), 16)
            if target <= address and target in index:
                found.append((target, address, i - index[target] + 1))
    return found


def same_code(old, new):
    """Whether two kernels' code is the same instruction for instruction (addresses aside)."""
    return [text.split("*/", 1)[-1].strip() for _, _, text in old] == [text.split("*/", 1)[-1].strip() for _, _, text in new]


def mix_change(old, new):
    """{opcode: count in new - count in old} for the opcodes whose counts differ."""
    before, after = collections.Counter(op for _, op, _ in old), collections.Counter(op for _, op, _ in new)
    return {op: after[op] - before[op] for op in sorted(set(before) | set(after)) if after[op] != before[op]}


def compare(old_kernels, new_kernels):
    """(name, state, old count, new count, mix change) for every kernel of either side, state one of
    'same', 'changed', 'new only', 'old only'; names in the new side's order, then the old side's rest."""
    rows = []
    for name, code in new_kernels.items():
        if name not in old_kernels:
            rows.append((name, "new only", 0, len(code), {}))
        elif same_code(old_kernels[name], code):
            rows.append((name, "same", len(code), len(code), {}))
        else:
            rows.append((name, "changed", len(old_kernels[name]), len(code), mix_change(old_kernels[name], code)))
    rows += [(name, "old only", len(code), 0, {}) for name, code in old_kernels.items() if name not in new_kernels]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("objects", nargs="*", help="object files or binaries with device code (default: the newest "
                        "build*/CMakeFiles/tmkernels.dir/kernels/cuda/*.o)")
    parser.add_argument("-k", "--kernel", default="", metavar="REGEX", help="only kernels whose mangled or demangled name matches")
    parser.add_argument("--arch", default="sm_90a", help="the code to read (default sm_90a; sm_89 for the RTX 4090's)")
    parser.add_argument("--mix", action="store_true", help="each kernel's opcode mix (opcodes without modifiers)")
    parser.add_argument("--loops", action="store_true", help="each backward branch: its target, itself, the instructions between")
    parser.add_argument("--dump", action="store_true", help="the kernel's SASS as cuobjdump prints it")
    parser.add_argument("--against", metavar="OLD", help="compare each kernel with the one of the same name in OLD, another "
                        "build's object: the same code, or its instruction count and opcode mix changed by how much")
    args = parser.parse_args()
    pattern = re.compile(args.kernel)
    objects, shown = args.objects or default_objects(), 0
    if args.against:
        old = kernels_of(args.against, args.arch)
        new = {}
        for path in objects:
            new.update(kernels_of(path, args.arch))
        names = demangle(sorted(set(old) | set(new)))
        states = collections.Counter()
        for name, state, before, after, change in compare(old, new):
            if not (pattern.search(name) or pattern.search(names[name])):
                continue
            states[state] += 1
            line = f"{state:8}  {names[name]}: {before} -> {after} instructions ({after - before:+d})"
            if change and args.mix:
                line += "; " + ", ".join(f"{op} {n:+d}" for op, n in change.items())
            print(line)
        if not states:
            sys.exit(f"sass.py: no kernel matching '{args.kernel}' in the {args.arch} code of either side")
        print(", ".join(f"{n} {state}" for state, n in sorted(states.items())))
        return
    for path in objects:
        kernels = kernels_of(path, args.arch)
        names = demangle(list(kernels))
        for mangled, code in kernels.items():
            if not code or not (pattern.search(mangled) or pattern.search(names[mangled])):
                continue
            shown += 1
            spills = sum(1 for _, op, text in code if op in ("STL", "LDL"))
            print(f"{os.path.basename(path)}  {names[mangled]}\n  {len(code)} instructions, {spills} local-memory (spill) accesses")
            if args.mix:
                mix = collections.Counter(op for _, op, _ in code)
                print("  " + "  ".join(f"{op} {n}" for op, n in mix.most_common()))
            if args.loops:
                for target, branch, size in loops(code):
                    print(f"  loop {target:#06x}..{branch:#06x}: {size} instructions")
            if args.dump:
                for _, _, text in code:
                    print("    " + text)
    if not shown:
        sys.exit(f"sass.py: no kernel matching '{args.kernel}' in the {args.arch} code of {len(objects)} object(s) "
                 "(was the build made for that architecture?)")


if __name__ == "__main__":
    main()
