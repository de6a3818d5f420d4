"""The table and figure of ``sparsa bench merge`` (``merge.md``, ``merge.png``)."""

LABELS = {"pretrained": "pretrained (base)", "individual": "individual fine-tuned", "task_arithmetic": "task arithmetic",
          "ties": "TIES", "dare": "DARE", "emr": "EMR-Merging (oracle)", "tall_masks": "TALL-masks (oracle)",
          "tswitch": "T-Switch (oracle)", "flexswitch": "FlexSwitch (oracle)",
          "auto_switch": "Auto-Switch (KNN mean shares, output features)",
          "auto_switch_vote": "Auto-Switch (KNN vote, output features)",
          "auto_switch_metric": "Auto-Switch (KNN vote, learned metric, patch features)",
          "auto_switch_centroid": "Auto-Switch (batch centroid, patch features)",
          "auto_switch_per_sample": "Auto-Switch (per-sample centroid, patch features)",
          "auto_flexswitch": "Auto-FlexSwitch (KNN vote, learned metric, patch features)"}


def markdown(payload: dict) -> str:
    m, s, domains = payload["machine"], payload["settings"], payload["domains"]
    lines = ["# Task-vector merging on the digits suite", "",
             f"{m['date']}, {m.get('cpu', m['device'])}, torch {m['torch']}; {len(domains)} domains "
             f"({', '.join(domains)}), ViT dim {s['suite']['dim']} depth {s['suite']['depth']}, "
             f"{payload['params']} parameters; T-Switch drop ratio {s['tswitch']['drop_ratio']}, "
             f"scale {s['tswitch']['scale_norm']}; FlexSwitch budget {s['flexswitch']['budget_bits']} bits/param, "
             f"{s['flexswitch']['steps']} gate steps; router k {s['router']['k']}, "
             f"{s['router']['samples_per_task']} query samples per task, learned metric rank {s['router']['rank']}; "
             f"batches of {s['batch']}", "",
             "Accuracy on each domain's test split, normalized to that domain's own fine-tuned model; "
             "bits per parameter per task stored beyond the base.", "",
             "| method | mean acc | mean normalized | " + " | ".join(domains) + " | bits/param/task | batch ms |",
             "|---|---|---|" + "---|" * len(domains) + "---|---|"]
    for r in payload["rows"]:
        cells = " | ".join(f"{r['accuracy'][d]:.3f}" for d in domains)
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {r['mean_accuracy']:.4f} | "
                     f"{r['mean_normalized']:.4f} | {cells} | {r['bits_per_param']:.3f} | {r['batch_ms']:.2f} |")
    routed = [r for r in payload["rows"] if "router_accuracy" in r]
    if routed:
        lines += ["", "Routers on single test samples (share sent to their own domain): " + "; ".join(
            f"{LABELS.get(r['method'], r['method'])} {r['router_accuracy']:.4f}" for r in routed) + ". Routed rows "
            "include the router's stored bytes."]
    return "\n".join(lines) + "\n"


def figure(payload: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in payload["rows"]:
        bits = max(r["bits_per_param"], 1e-2)
        ax.scatter(bits, r["mean_normalized"], s=30)
        ax.annotate(LABELS.get(r["method"], r["method"]), (bits, r["mean_normalized"]), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("bits per parameter per task (log)")
    ax.set_ylabel("mean normalized accuracy")
    ax.set_title("Task-vector merging, digits suite")
    fig.tight_layout()
    return fig
