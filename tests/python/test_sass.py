"""tools/sass.py's reading of cuobjdump's SASS (no GPU, no cuobjdump: a listing written here in its
format): the kernels are split at their headers, each instruction's opcode is read past its guard
predicate and modifiers, spills are counted from local-memory accesses, and a loop is each backward
branch with the instructions from its target to it (a forward branch, or one to an address outside
the kernel, is not a loop); two builds' kernels are compared name by name (the same code, a changed
count and mix, or one side only).
"""
import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("sass", ROOT / "tools" / "sass.py")
sass = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sass)

LISTING = """
	code for sm_90a
		Function : _Z6first_kernelPf
	.headerflags	@"EF_CUDA_TEXMODE_UNIFIED EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                           /* 0x00000a00ff017b82 */
                                                                                     /* 0x000fe20000000800 */
        /*0010*/                   S2R R0, SR_TID.X ;                               /* 0x0000000000007919 */
        /*0020*/                   IMAD.SHL.U32 R2, R0, 0x4, RZ ;                   /* 0x0000000400027824 */
        /*0030*/              @!P0 BRA 0x60 ;                                       /* 0x0000000000088947 */
        /*0040*/                   LDS.64 R4, [R2] ;                                /* 0x0000000002047984 */
        /*0050*/                   IMMA.16832.S8.S8 R8, R4.ROW, R6.COL, RZ ;        /* 0x0000000604087237 */
        /*0060*/                   STL [R1], R8 ;                                   /* 0x0000000801007387 */
        /*0070*/               @P1 BRA 0x40 ;                                       /* 0xfffffffc00f01947 */
        /*0080*/                   EXIT ;                                           /* 0x000000000000794d */
		..........

		Function : _Z6second_kernelv
        /*0000*/                   LDL R3, [R1] ;                                   /* 0x0000000001037983 */
        /*0010*/                   BRA 0x10;                                        /* 0xfffffffc00fc7947 */
"""


def test_parse_splits_kernels_and_reads_opcodes():
    kernels = sass.parse_sass(LISTING)
    assert list(kernels) == ["_Z6first_kernelPf", "_Z6second_kernelv"]
    first = kernels["_Z6first_kernelPf"]
    assert [op for _, op, _ in first] == ["LDC", "S2R", "IMAD", "BRA", "LDS", "IMMA", "STL", "BRA", "EXIT"]
    assert [address for address, _, _ in first] == list(range(0, 0x90, 0x10))
    assert sum(op in ("STL", "LDL") for _, op, _ in first) == 1


def test_loops_are_backward_branches():
    kernels = sass.parse_sass(LISTING)
    assert sass.loops(kernels["_Z6first_kernelPf"]) == [(0x40, 0x70, 4)]  # LDS, IMMA, STL, BRA
    assert sass.loops(kernels["_Z6second_kernelv"]) == [(0x10, 0x10, 1)]  # a branch to itself


def test_compare_tells_same_changed_and_one_sided_kernels():
    old = sass.parse_sass(LISTING)
    # the second kernel loses its spill load, a third appears, the first is unchanged
    changed = LISTING.replace("LDL R3, [R1] ;", "MOV R3, RZ ;").replace("Function : _Z6second_kernelv",
                                                                        "Function : _Z6third_kernelv\n        /*0000*/  EXIT ;\n\t\tFunction : _Z6second_kernelv")
    new = sass.parse_sass(changed)
    rows = {name: (state, before, after, change) for name, state, before, after, change in sass.compare(old, new)}
    assert rows["_Z6first_kernelPf"] == ("same", 9, 9, {})
    assert rows["_Z6second_kernelv"] == ("changed", 2, 2, {"LDL": -1, "MOV": 1})
    assert rows["_Z6third_kernelv"] == ("new only", 0, 1, {})
    assert sass.compare(new, old)[-1] == ("_Z6third_kernelv", "old only", 1, 0, {})
    # addresses alone do not make a change
    shifted = [(address + 0x100, op, text.replace(f"/*{address:04x}*/", f"/*{address + 0x100:04x}*/")) for address, op, text in
               old["_Z6first_kernelPf"]]
    assert sass.same_code(old["_Z6first_kernelPf"], shifted)
