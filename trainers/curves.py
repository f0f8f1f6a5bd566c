"""The learning curve of a run: `metrics.jsonl` (+ `baselines.json`, `eval.jsonl`) ->
`learning_curve.png`.

Six panels against training minutes: mean reward, diagnosis accuracy, exam F1, turns per episode,
distinct diagnoses per batch (a policy collapsing onto a few answers shows here first) and
staleness (learner version minus the version that generated each turn). Raw per-step values
are drawn faint with a moving average on top; the scripted baselines of the same run (random and
naive-Bayes clinician) are horizontal lines, and the policy's held-out evaluations
(`trainers.heldout`, on the cases the baselines ran on) are points with 95% intervals, sampled as
in training and, dotted, decoded greedily.
`python -m trainers.curves RUN_DIR` redraws it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.logs import read_json_lines

__all__ = ["plot_learning_curve", "smooth"]

PANELS = (
    ("reward", "mean reward"),
    ("accuracy", "diagnosis accuracy"),
    ("exam_f1", "exam F1"),
    ("turns", "turns per episode"),
    ("distinct_diagnoses", "distinct diagnoses\nper batch"),
    ("staleness_mean", "staleness (versions)"),
)
BASELINE_STYLE = {
    "random": ("tab:gray", ":"),
    "heuristic": ("tab:green", "--"),
    "demonstrator": ("tab:olive", "-."),  # the cold start's demonstrator, as it was configured
}


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_learning_curve(run_dir: Path, out: Path | None = None) -> Path | None:
    """Draw the curve; None when there is nothing to draw yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_json_lines(run_dir / "metrics.jsonl")
    if not rows:
        return None
    baselines_path = run_dir / "baselines.json"
    baselines = json.loads(baselines_path.read_text()) if baselines_path.exists() else {}
    evals = read_json_lines(run_dir / "eval.jsonl")
    demos_path = run_dir / "demos.json"  # the cold start: shaded up to where GRPO began
    cloned_min = json.loads(demos_path.read_text())["elapsed_s"] / 60 if demos_path.exists() else 0
    minutes = [r["elapsed_s"] / 60 for r in rows]
    window = max(1, len(rows) // 20)
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(8, 2.2 * len(PANELS)), sharex=True)
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        values = [float(r.get(key, 0.0)) for r in rows]
        ax.plot(minutes, values, color="tab:blue", alpha=0.25, linewidth=0.8)
        ax.plot(minutes, smooth(values, window), color="tab:blue", label="hf agent (GRPO)")
        for name, result in baselines.items():
            if key in result:
                color, style = BASELINE_STYLE.get(name, ("tab:red", "-."))
                ax.axhline(result[key], color=color, linestyle=style, label=f"{name} baseline")
        held = [e for e in evals if key in e]
        if held:
            ax.errorbar(
                [e["elapsed_s"] / 60 for e in held],
                [e[key] for e in held],
                yerr=[
                    [e[key] - e["ci95"][key][0] for e in held],
                    [e["ci95"][key][1] - e[key] for e in held],
                ],
                color="tab:orange",
                marker="o",
                markersize=3,
                capsize=2,
                label=f"hf agent, {held[-1]['n']} held-out cases",
            )
        greedy = [e for e in evals if key in e.get("greedy", {})]
        if greedy:
            ax.errorbar(
                [e["elapsed_s"] / 60 for e in greedy],
                [e["greedy"][key] for e in greedy],
                yerr=[
                    [e["greedy"][key] - e["greedy"]["ci95"][key][0] for e in greedy],
                    [e["greedy"]["ci95"][key][1] - e["greedy"][key] for e in greedy],
                ],
                color="tab:purple",
                marker="s",
                markersize=3,
                capsize=2,
                linestyle=":",
                label="hf agent, held-out, greedy",
            )
        if cloned_min:
            ax.axvspan(0, cloned_min, color="tab:green", alpha=0.08, label="cloning (demos)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    axes[-1].set_xlabel("training minutes")
    last = rows[-1]
    title = (
        f"{run_dir.name}: {last['step']} steps, {last['episodes']} episodes, "
        f"accuracy {smooth([r['accuracy'] for r in rows], window)[-1]:.3f}"
    )
    if evals:
        title += f", held-out {evals[-1]['accuracy']:.3f}"
        if "greedy" in evals[-1]:
            title += f" (greedy {evals[-1]['greedy']['accuracy']:.3f})"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = out or run_dir / "learning_curve.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python -m trainers.curves RUN_DIR\n")
        sys.exit(2)
    result = plot_learning_curve(Path(sys.argv[1]))
    sys.stdout.write(f"{result}\n" if result else "no metrics yet\n")
