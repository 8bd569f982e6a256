"""Output: the terminal/Markdown tables, the JSON file, the sweep plot and RESULTS.md."""
from __future__ import annotations

import dataclasses
import json
import os
import re


def _base(results, workload):
    """The graphc row every ratio on a workload is taken against."""
    for r in results:
        if r.workload == workload and r.system.startswith("graphc") and r.status == "ok":
            return r
    return None


def _cell(r, base) -> str:
    if r is None:
        return ""
    if r.status != "ok":
        return r.status
    text = f"{r.median_ms:.3g} ms"
    if base is not None and r is not base:
        text += f" ({r.median_ms / base.median_ms:.2f}x)"
    return text


def main_table(results, device: str) -> str:
    """Rows workloads, columns systems; cells ms/step and the ratio to graphc (x > 1:
    graphc is faster)."""
    rows = [r for r in results if r.device == device]
    workloads = list(dict.fromkeys(r.workload for r in rows))
    systems = list(dict.fromkeys(r.system + (" (TF32)" if r.tf32 else "") for r in rows))
    lines = ["| workload | " + " | ".join(systems) + " |",
             "| --- |" + " --- |" * len(systems)]
    for w in workloads:
        base = _base(rows, w)
        by_sys = {r.system + (" (TF32)" if r.tf32 else ""): r for r in rows if r.workload == w}
        lines.append(f"| {w} | " + " | ".join(_cell(by_sys.get(s), base) for s in systems)
                     + " |")
    return "\n".join(lines)


def _fmt(v, spec, suffix=""):
    return "" if v is None else format(v, spec) + suffix


def detail_table(results, device: str) -> str:
    """Every figure of every timed row."""
    lines = ["| workload | system | median ms | min-max ms | samples/s | TFLOP/s | x FLOP floor "
             "| x bytes floor | peak memory | compile s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if r.device != device or r.status != "ok":
            continue
        mem = "" if r.peak_memory_bytes is None else \
            f"{r.peak_memory_bytes / 2**20:.0f} MiB {r.memory_kind}"
        lines.append(
            f"| {r.workload} | {r.system}{' (TF32)' if r.tf32 else ''} | {r.median_ms:.4g} | "
            f"{r.min_ms:.4g}-{r.max_ms:.4g} | {_fmt(r.samples_per_s, '.4g')} | "
            f"{_fmt(r.tflops, '.3g')} | {_fmt(r.flop_floor_ratio, '.2f')} | "
            f"{_fmt(r.bytes_floor_ratio, '.2f')} | {mem} | {_fmt(r.compile_s, '.3g')} |")
    return "\n".join(lines)


def skipped(results, device: str) -> str:
    seen, lines = set(), []
    for r in results:
        if r.device == device and r.status != "ok" and (r.system, r.reason) not in seen:
            seen.add((r.system, r.reason))
            lines.append(f"- {r.system} on {r.workload}: {r.status} ({r.reason})")
    return "\n".join(lines)


def sweeps_text(sweeps: dict) -> str:
    lines = []
    for name in ("batch", "depth"):
        for system, s in sweeps.get(name, {}).items():
            if s["x"]:
                pts = ", ".join(f"{x}: {ms:.3g}" for x, ms in zip(s["x"], s["ms"]))
                e, eu = s["exponent"], s["exponent_upper_half"]
                lines.append(f"- {name} sweep, {system}: exponent {e:.2f} (upper half "
                             f"{eu:.2f}); ms per step by {name}: {pts}"
                             if e is not None and eu is not None else
                             f"- {name} sweep, {system}: {pts}")
    c = sweeps.get("compile")
    if c:
        pts = ", ".join(f"{n}: {s * 1e3:.0f}" for n, s in zip(c["steps"], c["seconds"]))
        lines.append(f"- compile time of graphc (grad + compile + first call) by plan steps, "
                     f"ms: {pts}; exponent {c['exponent']:.2f}")
    return "\n".join(lines)


def device_section(report: dict, device: str) -> str:
    m = report["machine"]
    c = report["ceilings"].get(device, {})
    hw = m["gpu"] if device == "gpu" else f"{m['cpu']} ({m['cores']} cores)"
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    parts = [
        f"Date: {m['date']}. Machine: {hw}. Python {m['python']}; {libs}"
        + (f"; NumPy's BLAS: {m['blas']}" if m.get("blas") else "") + ".",
        f"Command: `{m['command']}`.",
        f"Measured ceilings: float32 matmul {c.get('matmul_flops', 0) / 1e12:.2f} TFLOP/s "
        f"({c.get('matmul_size')}^3), copy {c.get('copy_bytes_per_s', 0) / 1e9:.1f} GB/s "
        "(bytes read + written).",
        "",
        "Median time per step; in brackets the ratio to graphc in the same run "
        "(above 1: graphc is faster).",
        "",
        main_table(report["results"], device),
        "",
        detail_table(report["results"], device),
    ]
    sk = skipped(report["results"], device)
    if sk:
        parts += ["", "Not timed:", sk]
    sw = sweeps_text(report.get("sweeps", {}).get(device, {}))
    if sw:
        parts += ["", "Scaling:", sw]
    return "\n".join(parts)


def to_json(report: dict, path: str) -> None:
    def enc(o):
        if dataclasses.is_dataclass(o):
            return dataclasses.asdict(o)
        raise TypeError(type(o))
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=enc)


def plot(report: dict, path: str) -> bool:
    """PNG of the sweeps (needs matplotlib, the `bench` extra). False when unavailable."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for device, sw in report.get("sweeps", {}).items():
        for ax, name, xlabel in ((axes[0], "batch", "batch size"), (axes[1], "depth", "layers")):
            for system, s in sw.get(name, {}).items():
                if s["x"]:
                    ax.loglog(s["x"], s["ms"], marker="o", label=f"{system} ({device})")
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xlabel(xlabel)
            ax.set_ylabel("ms per step")
            ax.set_title(f"step time against {xlabel}")
        c = sw.get("compile")
        if c:
            axes[2].loglog(c["steps"], c["seconds"], marker="o", label=f"graphc ({device})")
    axes[2].set_xlabel("plan steps")
    axes[2].set_ylabel("compile seconds")
    axes[2].set_title("compile time against graph size")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


HEADER = ("# Benchmark results\n\nWritten by `python -m benchmarks` (`make bench`) at the end of "
          "a full run; do not edit by hand. Each section is replaced by the next full run on "
          "that device.\n")


def write_results(report: dict, path: str, devices) -> None:
    """Replace the CPU and/or GPU section of RESULTS.md with this run's figures."""
    text = open(path).read() if os.path.exists(path) else HEADER
    for device in devices:
        title = "Latest full GPU run" if device == "gpu" else "Latest full CPU run"
        block = (f"<!-- {device}:start -->\n## {title}\n\n{device_section(report, device)}\n"
                 f"<!-- {device}:end -->")
        pattern = re.compile(rf"<!-- {device}:start -->.*?<!-- {device}:end -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)
