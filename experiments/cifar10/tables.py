"""The tables of docs/cifar10.md, printed as markdown from the results the experiment wrote.

    python experiments/cifar10/tables.py [docs/cifar10]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/cifar10")
    k = json.loads((out / "kernel" / "results.json").read_text())
    h = json.loads((out / "results.json").read_text())
    e = k["ensemble"]
    print(f"Single run: {pct(e['mean_accuracy'])} +- {100 * e['std_accuracy']:.2f} over {len(e['runs']) if isinstance(e['runs'], list) else e['runs']} runs; ensemble of all by logits {pct(e['ensemble_accuracy'])}, by probabilities {pct(e['ensemble_prob_accuracy'])}.\n")
    print("| runs n | ensemble (mean logits) | k-NN k=3, log-softmax | k-NN top-20 weighted (K^4), log-softmax | k-NN k=3, raw logits | weighted, raw logits |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in k["knn_by_runs"]:
        ls, raw = r["log_softmax"], r["raw"]
        print(f"| {r['runs']} | {pct(r['ensemble_logit_accuracy'])} | {pct(ls['majority_k3'])} | {pct(ls['weighted_k20_p4'])} | {pct(raw['majority_k3'])} | {pct(raw['weighted_k20_p4'])} |")
    print("\n| runs n | full kernel, log-softmax | mean single-class kernel, log-softmax | full kernel, raw | mean single-class kernel, raw |")
    print("| --- | --- | --- | --- | --- |")
    for r in k["per_class"]:
        ls, raw = r["log_softmax"], r["raw"]
        print(
            f"| {r['runs']} | {pct(ls['full_kernel'])} | {pct(ls['mean_class_kernel'])} (range {pct(min(ls['class_kernels']))} to {pct(max(ls['class_kernels']))}) "
            f"| {pct(raw['full_kernel'])} | {pct(raw['mean_class_kernel'])} (range {pct(min(raw['class_kernels']))} to {pct(max(raw['class_kernels']))}) |"
        )
    f = k["features"]
    px = f["pixel_rms_distance"]
    print("\n| | kernel | penultimate features (one run) |")
    print("| --- | --- | --- |")
    print(f"| nearest train example has the test label | {pct(f['nearest_same_label']['kernel'])} | {pct(f['nearest_same_label']['features'])} |")
    print(f"| k-NN (k=3) test accuracy | {pct(f['knn_k3_accuracy']['kernel'])} | {pct(f['knn_k3_accuracy']['features'])} (the run itself: {pct(f['single_run_accuracy_of_feature_run'])}) |")
    print(f"| RMS pixel distance, 100 most similar pairs | {px['kernel_top100_pairs']:.3f} | {px['features_top100_pairs']:.3f} |")
    print(f"| RMS pixel distance, nearest train example of every test example | {px['kernel_nearest_all']:.3f} | {px['features_nearest_all']:.3f} |")
    print(f"\n(random same-class pairs: {px['random_same_class']:.3f}; pixels in [0, 1].) Test examples whose nearest training example has another label: {k['pairs']['nearest_label_differs']:,}; top kernel value {k['pairs']['top1_kernel']['max']:.3f}, at rank 600 {k['pairs']['top1_kernel']['rank_600']:.3f}.")
    tp = k.get("train_pairs", {})
    if tp:
        print(f"Inside the training set: {json.dumps({key: v for key, v in tp.items() if key != 'top48'})}")
    print(f"\nKernel script: {json.dumps({key: round(v, 1) for key, v in k['seconds'].items()})} s")
    m, c = h["memorization"], h["cscore"]
    print(f"\nPopulation: {h['runs']} runs, {h['training_worker_hours']:.2f} worker-hours ({h['training_seconds_per_run']:.0f} s per run per worker); test {pct(h['mean_test_accuracy'])} +- {100 * h['std_test_accuracy']:.2f}, held-out {pct(h['mean_heldout_accuracy'])}, train {pct(h['mean_train_accuracy'])}.")
    print(f"Memorization: mean {m['mean']:.4f}; fraction >= 0.1/0.25/0.5/0.75: {h['memorization_fraction_at_least']}; split-half {m['stability']}")
    print(f"Memorization per class: { {key: round(v, 4) for key, v in h['memorization_per_class_mean'].items()} }")
    print(f"C-score: mean {c['mean']:.4f}; per class { {key: round(v, 3) for key, v in h['cscore_per_class_mean'].items()} }; stability {c['stability']}")
    print(f"Learning-speed Spearman with the C-score: {h['learning_speed_spearman']:.3f}; memorization vs C-score: {h['memorization_cscore_spearman']:.3f}")
    i = h["influence"]
    print(f"Influence: {i['pairs']} high-influence pairs; pair stability {i['pair_stability']}; pairs per class {h['pairs_per_class']}")
    print(f"Analysis seconds: {json.dumps({key: round(v, 1) for key, v in h['seconds'].items()})}")


if __name__ == "__main__":
    main()
