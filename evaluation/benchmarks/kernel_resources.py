"""Compile the fused kernels for a GPU architecture without a GPU, and report their shared memory.

Triton compiles to PTX on any machine; this catches what the interpreter (TRITON_INTERPRET=1)
cannot: code the GPU compiler rejects, and tile sizes that need more shared memory than one
thread block can have (227 KiB on sm_90 / H100). It does not measure speed.

    python -m evaluation.benchmarks.kernel_resources                     # d in 32/64/128, chunk 16/64, sm_90, tf32 and ieee dots
    python -m evaluation.benchmarks.kernel_resources --head-dims 32 --chunk-sizes 16 --output /tmp/x/kernel_resources.json

Writes outputs/kernel_resources.json (--commit-results: evaluation/results/): per kernel and shape, shared memory, whether it fits, and whether
the op dispatches to it (fused_kernel_supports). Run it without TRITON_INTERPRET set.
"""

import os
import sys
import time

from tqdm import tqdm

from evaluation.lib.timing import benchmark_parser, results_file

SHARED_MEMORY_LIMIT = {90: 232448, 80: 166912}  # bytes per thread block (opt-in maximum)
FWD_ARGS = ["u_ptr", "q_ptr", "keep_ptr", "b_eta_ptr", "b_alpha_ptr", "p0_ptr", "h_ptr", "o_ptr", "eta_max", "num_chunks", "H"]
BWD_ARGS = ["u_ptr", "q_ptr", "keep_ptr", "b_eta_ptr", "b_alpha_ptr", "p0_ptr", "h_ptr", "do_ptr", "dh_ptr", "du_ptr",
            "dq_ptr", "dstate_ptr", "dp0_ptr", "db_eta_ptr", "db_alpha_ptr", "eta_max", "num_chunks", "H"]


def compile_kernel(kernel, arg_names, constants: dict, arch: int, num_warps: int):
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: "fp32" if name == "eta_max" else "i32" if name in ("num_chunks", "H") else "*fp32"
                 for name in arg_names}
    signature.update({name: "constexpr" for name in constants})
    constexprs = {(list(signature).index(name),): value for name, value in constants.items()}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton_compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def main(argv=None):
    parser = benchmark_parser(__doc__, "kernel_resources", threads=None)
    parser.add_argument("--head-dims", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_MEMORY_LIMIT))
    parser.add_argument("--num-warps", type=int, default=4)
    parser.add_argument("--precisions", nargs="+", default=["tf32", "ieee"], choices=["tf32", "ieee"],
                        help="dots: tf32 (bf16/fp16 inputs) or ieee (fp32 inputs)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter replaces the kernels this script compiles")

    from hope_hf.ops.self_referential.fused_chunk import _bwd_kernel, _fwd_kernel, _tile_width, fused_kernel_supports

    results = results_file(args, __spec__.name, argv, "kernel_resources")
    rows = []
    configs = [(d, chunk, precision) for d in args.head_dims for chunk in args.chunk_sizes for precision in args.precisions]
    for d, chunk, precision in tqdm(configs, desc="compiling"):
        for name, kernel, arg_names, extra in (("forward", _fwd_kernel, FWD_ARGS, {}),
                                               ("backward", _bwd_kernel, BWD_ARGS, {"DETACH": False})):
            constants = {"L": chunk, "D": d, "BV": _tile_width(d), "SELF_REF": True, **extra, "PREC": precision}
            start = time.perf_counter()
            compiled = compile_kernel(kernel, arg_names, constants, args.arch, args.num_warps)
            shared = compiled.metadata.shared
            row = {"kernel": name, "head_dim": d, "chunk_size": chunk, "operands": precision,
                   "tile_width": constants["BV"],
                   "shared_memory_bytes": shared, "fits": shared <= SHARED_MEMORY_LIMIT[args.arch],
                   "ptx_lines": compiled.asm["ptx"].count("\n"), "compile_s": round(time.perf_counter() - start, 1)}
            row["dispatched"] = fused_kernel_supports(d, chunk)
            rows.append(row)
            tqdm.write(str(row))
    path = results.save(arch=f"sm_{args.arch}", num_warps=args.num_warps,
                        shared_memory_limit_bytes=SHARED_MEMORY_LIMIT[args.arch], kernels=rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
