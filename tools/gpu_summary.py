"""Collects what tools/gpu_check.sh produced in RESULTS_DIR into OUT/results.jsonl and
OUT/summary.md, and prints the short summary (the device tool returns the output's tail)."""
import json, os, re, sys

DEFAULT_KERNEL = "flash fw4 fr32 bw4 br64 bk16"  # cuda::FlashConfig's defaults, as the bench labels them


def jsonl(path):
    rows = []
    if os.path.exists(path):
        for line in open(path, errors="replace"):
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def main(rdir, out):
    md = []
    allrows = []

    def add(source, rows):
        for r in rows:
            allrows.append(dict(source=source, **r))

    # ---- tests -----------------------------------------------------------------------
    log = os.path.join(out, "gpu_tests.log")
    if os.path.exists(log):
        text = open(log, errors="replace").read()
        checks = re.findall(r"\[check\] (.*)", text)
        bad = [c for c in checks if re.search(r"nonfinite [1-9]", c)]
        for c in checks:
            m = re.search(r"rel_err ([0-9.e+-]+).*\(tol ([0-9.e+-]+)\)", c)
            if m and float(m.group(1)) > float(m.group(2)):
                bad.append(c)
        passed = re.search(r"\[  PASSED  \] (\d+) test", text)
        failed = re.findall(r"\[  FAILED  \] ([\w.]+)", text)
        md.append("### GPU correctness tests (CUDA vs the fp32 CPU backend)")
        md.append(f"- passed: {passed.group(1) if passed else 0}, failed: {len(set(failed))} {sorted(set(failed))}")
        md.append(f"- {len(checks)} tensor comparisons, {len(bad)} out of tolerance")
        for c in bad[:12]:
            md.append(f"  - {c}")
        worst = {}
        for c in checks:
            m = re.match(r"(\S+(?: \S+)?).*rel_err ([0-9.e+-]+)", c)
            if m:
                k = m.group(1).split()[0]
                worst[k] = max(worst.get(k, 0.0), float(m.group(2)))
        if worst:
            md.append("- worst relative error per op: " + ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items())))
    mc = os.path.join(rdir, "memcheck.out")
    if os.path.exists(mc):
        s = re.findall(r"ERROR SUMMARY: .*", open(mc, errors="replace").read())
        md.append(f"- compute-sanitizer memcheck: {s[-1] if s else 'no summary (timed out?)'}")

    # ---- attention ---------------------------------------------------------------------
    ours = []
    for f in ("attention_1B", "attention_tiny", "attention_3B"):
        rows = jsonl(os.path.join(rdir, f + ".out"))
        add(f, rows)
        ours += rows
    torch_rows = jsonl(os.path.join(rdir, "sdpa.out"))
    add("sdpa_torch", torch_rows)
    if ours:
        md.append("\n### Attention forward+backward (causal, GQA, bf16), median us")
        md.append("| shape | B,T,H/KV,D | ours default | ours best (kernel) | fwd / bwd | torch flash | torch cuDNN | ours vs cuDNN |")
        md.append("|---|---|---|---|---|---|---|---|")
        for shape in dict.fromkeys(r["shape"] for r in ours):
            rs = [r for r in ours if r["shape"] == shape]
            best_f = min(rs, key=lambda r: r["fwd_us"])
            best_b = min(rs, key=lambda r: r["bwd_us"])
            tot = best_f["fwd_us"] + best_b["bwd_us"]
            tflops = (best_f["fwd_tflops"] * best_f["fwd_us"] + best_b["bwd_tflops"] * best_b["bwd_us"]) / tot
            tr = {r["backend"]: r for r in torch_rows if r.get("shape") == shape}
            def fmt_t(b):
                r = tr.get(b)
                if not r:
                    return "n/a"
                if "error" in r:
                    return "error"
                return f"{r['fwd_bwd_us']:.0f} ({r['fwd_bwd_tflops']:.0f} TF/s)"
            cud = tr.get("cudnn")
            ratio = f"{cud['fwd_bwd_us'] / tot:.2f}x speed" if cud and "fwd_bwd_us" in cud else "n/a"
            r0 = rs[0]
            d = next((r for r in rs if r["kernel"] == DEFAULT_KERNEL), None)
            dflt = f"{d['fwd_bwd_us']:.0f} ({d['fwd_us']:.0f}/{d['bwd_us']:.0f})" if d else "n/a"
            md.append(f"| {shape} | {r0['B']},{r0['T']},{r0['H']}/{r0['KV']},{r0['D']} | {dflt} | {tot:.0f} ({tflops:.0f} TF/s; "
                      f"fwd {best_f['kernel']}, bwd {best_b['kernel']}) | {best_f['fwd_us']:.0f} / {best_b['bwd_us']:.0f} | "
                      f"{fmt_t('flash')} | {fmt_t('cudnn')} | {ratio} |")

    # ---- GEMM ---------------------------------------------------------------------------
    tune = jsonl(os.path.join(rdir, "tune.out"))
    add("tune_1B", tune)
    if tune:
        h = sum(r["heuristic_us"] for r in tune)
        t = sum(r["tuned_us"] for r in tune)
        md.append("\n### GEMM tuning (llama3.2-1B training GEMMs, mbs 8, seq 2048)")
        md.append(f"- {len(tune)} shapes; heuristic {h / 1e3:.2f} ms -> tuned {t / 1e3:.2f} ms per set, speedup {h / t:.3f}x; "
                  f"largest {max(r['speedup'] for r in tune):.2f}x")
    dense = jsonl(os.path.join(rdir, "dense_tuned.out"))
    add("dense_tuned", dense)
    if dense and tune:
        best = {(r["m"], r["n"], r["k"]): r["tuned_us"] for r in tune}
        worse = [(r["gemm"], r["us"] / best[(r["m"], r["n"], r["k"])]) for r in dense if (r["m"], r["n"], r["k"]) in best]
        md.append("- stage 3 run (table loaded): per-shape time / tuned time: " +
                  ", ".join(f"{g} {x:.2f}" for g, x in worse))
        step_ms = sum(r["us"] * r["count"] for r in dense) / 1e3
        md.append(f"- GEMM time of one training step (mbs 8): {step_ms:.1f} ms; mean "
                  f"{sum(r['tflops'] * r['us'] * r['count'] for r in dense) / sum(r['us'] * r['count'] for r in dense):.0f} TFLOP/s")
    g8 = jsonl(os.path.join(rdir, "gemm8192.out"))
    add("gemm8192", g8)
    for r in g8:
        md.append(f"- GEMM 8192^3 bf16: heuristic {r['tflops']:.0f} TFLOP/s, best candidate {r.get('best_tflops', 0):.0f} "
                  f"TFLOP/s ({r.get('candidates', 0)} candidates)")

    # ---- ops ----------------------------------------------------------------------------
    ops = jsonl(os.path.join(rdir, "ops.out"))
    add("ops_1B", ops)
    if ops:
        md.append("\n### Memory-bound ops (llama3.2-1B, 16384 tokens): time vs HBM floor")
        md.append("| op | shape | us | GB/s | % of floor |")
        md.append("|---|---|---|---|---|")
        for r in ops:
            md.append(f"| {r['op']} | {r['shape']} | {r['us']:.1f} | {r['gbps']:.0f} | {r['pct_of_floor']:.0f}% |")

    steps = jsonl(os.path.join(rdir, "steps.jsonl"))
    if steps:
        md.append("\nsteps: " + ", ".join(f"{s['step']} rc={s['rc']} {s['seconds']}s" for s in steps))
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "results.jsonl"), "w") as f:
        for r in allrows:
            f.write(json.dumps(r) + "\n")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
