"""Paired-bootstrap comparison of two decoded systems, per language and overall, as a table."""

from comsl_fairseq.evaluation.scoring import paired_bootstrap, stratified_bootstrap_mean


def compare(groups: dict, samples: int) -> dict:
    """{row name: {"bleu": PairedResult dict, "chrf": ...}} for each language, pooled and mean."""
    rows = {}
    for lang, (a, b, refs) in groups.items():
        rows[lang] = {m: paired_bootstrap(a, b, refs, m, samples).as_dict() for m in ("bleu", "chrf")}
    if len(groups) > 1:
        pooled = [sum((list(g[i]) for g in groups.values()), []) for i in range(3)]
        rows["all (pooled)"] = {m: paired_bootstrap(*pooled, m, samples).as_dict() for m in ("bleu", "chrf")}
        rows["mean of languages"] = {m: stratified_bootstrap_mean(groups, m, samples).as_dict()
                                     for m in ("bleu", "chrf")}
    return rows


def table(rows: dict, name_a: str, name_b: str) -> str:
    lines = [f"A = {name_a}", f"B = {name_b}", "",
             "| set | n | BLEU A | BLEU B | Δ BLEU [95 % CI] | p | chrF A | chrF B | Δ chrF [95 % CI] | p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        cells = []
        for m in ("bleu", "chrf"):
            x = r[m]
            cells += [f"{x['a']:.2f}", f"{x['b']:.2f}",
                      f"{x['delta']:+.2f} [{x['delta_low']:+.2f}, {x['delta_high']:+.2f}]", f"{x['p_value']:.4f}"]
        lines.append(f"| {name} | {r['bleu']['n']} | " + " | ".join(cells) + " |")
    first = next(iter(rows.values()))
    lines += ["", f"BLEU: `{first['bleu']['signature']}`", f"chrF: `{first['chrf']['signature']}`",
              "p: sacreBLEU's paired bootstrap p-value (chance of a difference this large if A and B were equal)."]
    return "\n".join(lines)
