#!/usr/bin/env python3
"""Markdown tables from scripts/bench_gpu.sh's rows: candle-xai on wgpu, on CUDA (when measured) and on CPU vs
PyTorch + captum / zennit on CUDA and on CPU, same weights and input, same machine.

    python3 scripts/bench_gpu_report.py WORK_DIR     # reads ours_{wgpu,cuda,cpu}.jsonl, torch_{cuda,cpu}.jsonl
"""

import json
import os
import sys


def rows(work, name):
    path = os.path.join(work, name)
    if not os.path.exists(path):
        return {}
    lines = [json.loads(line) for line in open(path) if line.strip().startswith("{")]
    return {(r["model"], r["method"]): r for r in lines}


def main():
    work = sys.argv[1]
    ours_gpu, ours_cpu = rows(work, "ours_wgpu.jsonl"), rows(work, "ours_cpu.jsonl")
    ours_cuda = rows(work, "ours_cuda.jsonl")
    torch_gpu, torch_cpu = rows(work, "torch_cuda.jsonl"), rows(work, "torch_cpu.jsonl")
    adapter = next(iter(ours_gpu.values()), {}).get("device", "?")
    cuda = next(iter(torch_gpu.values()), {}).get("device", "?")
    threads = next(iter(ours_cpu.values()), {}).get("threads", "?")
    print(f"Adapter (ours, wgpu): {adapter}. PyTorch on CUDA: {cuda}. CPU rows: {threads} threads.\n")
    ms = lambda table, key: f"{table[key]['ms_median']:.1f}" if key in table else "–"
    ratio = lambda a, b, key: f"{a[key]['ms_median'] / b[key]['ms_median']:.2f}" if key in a and key in b else "–"
    for model in sorted({m for m, _ in ours_gpu}):
        print(f"### {model}\n")
        print("| method | ours wgpu ms | ours CUDA ms | PyTorch CUDA ms | PyTorch / ours wgpu "
              "| PyTorch / ours CUDA | ours CPU ms | PyTorch CPU ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for key in [k for k in ours_gpu if k[0] == model]:
            print(f"| {key[1]} | {ms(ours_gpu, key)} | {ms(ours_cuda, key)} | {ms(torch_gpu, key)} "
                  f"| {ratio(torch_gpu, ours_gpu, key)} | {ratio(torch_gpu, ours_cuda, key)} "
                  f"| {ms(ours_cpu, key)} | {ms(torch_cpu, key)} |")
        print()


if __name__ == "__main__":
    main()
