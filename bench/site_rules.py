"""How often a site threshold rule holds its target, over many splits of one acceptance set.

`site-calibrate` measures a site's operating point on one split of the site's patients into two
halves (fitted on one, measured on the other, both ways). One split is one draw: with about a
hundred pneumonia films a half, the measured sensitivity moves by a film or two with the split.
This scores the set once through the exported `serving_default` signature, then repeats the
cross-fit over `--splits` patient splits (seeds 0, 1, ...) for each threshold rule (the average
rule, `none`, and each `--confidence`), and reports per rule the median held-out sensitivity and
specificity, their 5th-95th percentiles, and the share of splits whose held-out sensitivity falls
below the target and whose specificity falls below `--min-specificity`.

    python -m bench.site_rules --model DIR --data DIR [--splits 200] [--confidence none 0.95]
        [--target-sensitivity 0.95] [--min-specificity 0.90] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from services.trainer.cli.site import parse_confidence
from services.trainer.evaluation.site_calibration import patient_groups, split_figures, spread


def split_variation(p, y, groups: Sequence[str], target_sensitivity: float,
                    confidence: float | None, splits: int,
                    min_specificity: float) -> dict:
    """Held-out sensitivity and specificity of one rule over `splits` patient splits."""
    sens, spec = split_figures(p, y, groups, target_sensitivity, confidence, splits)
    return {
        "confidence": confidence, "splits": len(sens),
        "sensitivity": spread(sens), "specificity": spread(spec),
        "share_sensitivity_below_target": float((sens < target_sensitivity - 1e-12).mean()),
        "share_specificity_below_floor": float((spec < min_specificity - 1e-12).mean()),
        "share_both_met": float(((sens >= target_sensitivity - 1e-12)
                                 & (spec >= min_specificity - 1e-12)).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="exported version folder")
    parser.add_argument("--data", type=Path, required=True,
                        help="labelled acceptance set (as site-calibrate reads it)")
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--confidence", type=parse_confidence, nargs="+", default=[None, 0.95],
                        help="threshold rules: 'none' (on average) and/or confidences")
    parser.add_argument("--target-sensitivity", type=float, default=0.95)
    parser.add_argument("--min-specificity", type=float, default=0.90)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)

    from services.trainer.artifact.scoring import model_image_size, score_site
    from services.trainer.data.site_records import read_site_records

    records = read_site_records(args.data)
    y, p, _ = score_site(args.model, records, model_image_size(args.model))
    groups = patient_groups(records)
    rows = [split_variation(p, y, groups, args.target_sensitivity, c, args.splits,
                            args.min_specificity) for c in args.confidence]
    print(f"| rule | sensitivity median (5-95 %) | specificity median (5-95 %) | splits with "
          f"sensitivity < {args.target_sensitivity} | specificity < {args.min_specificity} | "
          "both met |\n|---|---|---|---|---|---|")
    for row in rows:
        rule = "on average" if row["confidence"] is None else f"{row['confidence']:.0%} confidence"
        sens, spec = row["sensitivity"], row["specificity"]
        print(f"| {rule} | {sens['median']:.3f} ({sens['p5']:.3f}-{sens['p95']:.3f}) | "
              f"{spec['median']:.3f} ({spec['p5']:.3f}-{spec['p95']:.3f}) | "
              f"{row['share_sensitivity_below_target']:.0%} | "
              f"{row['share_specificity_below_floor']:.0%} | {row['share_both_met']:.0%} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": str(args.model), "data": str(args.data),
                                         "n": len(y), "rules": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
