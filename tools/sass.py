#!/usr/bin/env python3
"""sass.py - the machine code (SASS) of the CUDA kernels a build compiled, counted without a GPU:
per kernel its instructions, their mix by opcode and its loops (each backward branch: the
instructions from its target to it, one pass of the loop as laid out, every path included).
Static counts, not a measurement: they say what a change did to the code (a cut of N instructions
a block, a new spill), the harness says what it did to the time (docs/perf-notes.md, session 58).

usage: sass.py [OBJECT ...] [-k REGEX] [--arch sm_90a] [--mix] [--loops] [--dump]
  OBJECT   object files or binaries with device code (default: build*/CMakeFiles/tmkernels.dir/
           kernels/cuda/*.o, the newest build directory's)
  -k       only kernels whose mangled or demangled name matches REGEX (re.search)
  --mix    the opcode mix of each kernel (opcode without modifiers: IMMA, LDS, LOP3, ...)
  --loops  each backward branch of each kernel: its target, itself and the instructions between
  --dump   the kernel's SASS as cuobjdump prints it

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
    args = parser.parse_args()
    pattern = re.compile(args.kernel)
    objects, shown = args.objects or default_objects(), 0
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
