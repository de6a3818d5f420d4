"""The table and figure of ``sparsa bench merge`` (``merge.md``, ``merge.png``)."""

LABELS = {"pretrained": "pretrained (base)", "individual": "individual fine-tuned", "task_arithmetic": "task arithmetic",
          "ties": "TIES", "dare": "DARE", "emr": "EMR-Merging (oracle)", "tall_masks": "TALL-masks (oracle)",
          "tswitch": "T-Switch (oracle)", "flexswitch": "FlexSwitch (oracle)",
          "auto_switch": "Auto-Switch (KNN mean shares, output features)",
          "auto_switch_vote": "Auto-Switch (KNN vote, output features)",
          "auto_switch_metric": "Auto-Switch (KNN vote, learned metric, input features)",
          "auto_switch_centroid": "Auto-Switch (batch centroid, input features)",
          "auto_switch_per_sample": "Auto-Switch (per-sample centroid, input features)",
          "auto_flexswitch": "Auto-FlexSwitch (KNN vote, learned metric, input features)",
          "auto_switch_side": "Auto-Switch (batch centroid, input features, sparse side branches)"}


def table(rows: list[dict], tasks: list[str], metric: str) -> list[str]:
    """Markdown lines: one row per method, the metric per task with 3 decimals (perplexity 2)."""
    digits = 3 if metric == "accuracy" else 2
    short = {"accuracy": "acc", "perplexity": "ppl"}[metric]
    lines = [f"| method | mean {short} | mean normalized | " + " | ".join(tasks) + " | bits/param/task | batch ms |",
             "|---|---|---|" + "---|" * len(tasks) + "---|---|"]
    for r in rows:
        cells = " | ".join(f"{r[metric][t]:.{digits}f}" for t in tasks)
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {r['mean_' + metric]:.4f} | "
                     f"{r['mean_normalized']:.4f} | {cells} | {r['bits_per_param']:.3f} | {r['batch_ms']:.2f} |")
    routed = [r for r in rows if "router_accuracy" in r]
    if routed:
        lines += ["", "Routers on single test samples (share sent to their own task): " + "; ".join(
            f"{LABELS.get(r['method'], r['method'])} {r['router_accuracy']:.4f}" for r in routed) + ". Routed rows "
            "include the router's stored bytes."]
    return lines


def markdown(payload: dict) -> str:
    m, s, domains = payload["machine"], payload["settings"], payload["domains"]
    lines = ["# Task-vector merging", "",
             f"{m['date']}, {m.get('cpu', m['device'])}, torch {m['torch']}. T-Switch drop ratio "
             f"{s['tswitch']['drop_ratio']}, scale {s['tswitch']['scale_norm']}; FlexSwitch budget "
             f"{s['flexswitch']['budget_bits']} bits/param; router k {s['router']['k']}, "
             f"{s['router']['samples_per_task']} query samples per task, learned metric rank {s['router']['rank']}. "
             "Routers read the base model's features of the batch: output features are its last ones (digits: "
             "the final CLS feature; language: the final norm's output, mean over the window), input features "
             "its first (digits: the patch embeddings; language: the tuned blocks' inputs, mean over the window).",
             "", "## Digits", "",
             f"{len(domains)} domains ({', '.join(domains)}), ViT dim {s['suite']['dim']} depth {s['suite']['depth']}, "
             f"{payload['params']} parameters; FlexSwitch {s['flexswitch']['steps']} gate steps; batches of "
             f"{s['batch']}. Accuracy on each domain's test split, normalized to that domain's own fine-tuned "
             "model; bits per parameter per task stored beyond the base.", "",
             *table(payload["rows"], domains, "accuracy")]
    if "lm" in payload:
        lm, ls = payload["lm"], s["lm"]
        lines += ["", "## Language", "",
                  f"{ls['model']}, the top {ls['tuned_layers']} blocks ({lm['params']} parameters) fine-tuned per "
                  f"corpus ({', '.join(lm['tasks'])}) for {ls['steps']} steps on {ls['train_windows']} windows of "
                  f"{ls['seqlen']} tokens; perplexity on {ls['test_windows']} test windows of its evaluation part, "
                  "normalized as the individual model's perplexity over the method's; bits per tuned parameter per "
                  f"task; FlexSwitch {s['lm_flexswitch']['steps']} gate steps (allocation and fit only when 0); batches "
                  f"of {s['lm_batch']} windows.",
                  "", *table(lm["rows"], lm["tasks"], "perplexity")]
    return "\n".join(lines) + "\n"


def figure(payload: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [("digits (accuracy)", payload["rows"])]
    if "lm" in payload:
        families.append(("language (perplexity)", payload["lm"]["rows"]))
    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families), 7), squeeze=False)
    order = list(LABELS)
    colors, markers = plt.get_cmap("tab20").colors, "osD^v<>ph*XP"
    for ax, (title, rows) in zip(axes[0], families):
        for r in rows:  # one colour and marker per method, the same in every panel
            i = order.index(r["method"]) if r["method"] in order else len(order)
            ax.scatter(max(r["bits_per_param"], 1e-2), r["mean_normalized"], s=40, color=colors[i % len(colors)],
                       marker=markers[i % len(markers)], label=LABELS.get(r["method"], r["method"]))
        ax.set_xscale("log")
        ax.set_xlabel("bits per parameter per task (log)")
        ax.set_ylabel("mean normalized score")
        ax.set_title(f"Task-vector merging, {title}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.subplots_adjust(bottom=0.36, top=0.95, wspace=0.25)
    return fig
