"""Evaluation reports: one document, rendered as Markdown (figures linked as
files beside it) and as self-contained HTML (figures embedded as base64 PNG).

A report is a list of blocks (``Document``), so the two renderings cannot drift.
``evaluation_report`` turns the output of ``cxr_tf.evaluation.metrics.summarize`` plus the
run's config into such a document; ``write_report`` writes ``report.md`` and
``report.html``.
"""

import base64
import html
import json
import re
from pathlib import Path

import numpy as np

from cxr_tf.data.labels import LABELS
from cxr_tf.evaluation.literature import COMPARABILITY_NOTE, describe_split

NA = "–"


class Document:
    """An ordered list of blocks: heading, paragraph, table, figure, code."""

    def __init__(self, title):
        self.title = title
        self.blocks = []

    def heading(self, text, level=2):
        self.blocks.append(("heading", level, text))

    def para(self, text):
        """A paragraph; ``**bold**`` and ``code`` spans are rendered in both formats."""
        self.blocks.append(("para", text))

    def bullets(self, items):
        self.blocks.append(("bullets", list(items)))

    def table(self, header, rows):
        self.blocks.append(("table", list(header), [list(r) for r in rows]))

    def figure(self, path, caption):
        """A PNG file (absolute, or relative to the report's folder) with a caption."""
        self.blocks.append(("figure", Path(path), caption))

    def code(self, text, language=""):
        self.blocks.append(("code", text, language))


# --------------------------------------------------------------------------- rendering
def _md_cell(value):
    return str(value).replace("|", "\\|").replace("\n", " ")


def _relative(path, out_dir):
    path = Path(path)
    try:
        return path.resolve().relative_to(Path(out_dir).resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def render_markdown(doc, out_dir):
    """Markdown text; figure links are relative to ``out_dir`` where possible."""
    lines = [f"# {doc.title}", ""]
    for block in doc.blocks:
        kind = block[0]
        if kind == "heading":
            lines += [f"{'#' * block[1]} {block[2]}", ""]
        elif kind == "para":
            lines += [block[1], ""]
        elif kind == "bullets":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            lines.append("|" + "|".join(" --- " for _ in header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "figure":
            lines += [f"![{block[2]}]({_relative(block[1], out_dir)})", "", f"*{block[2]}*", ""]
        elif kind == "code":
            lines += [f"```{block[2]}", block[1].rstrip("\n"), "```", ""]
    return "\n".join(lines)


def _inline_html(text):
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2} td:first-child,th:first-child{text-align:left}
figure{margin:1.5em 0} img{max-width:100%;border:1px solid #eee}
figcaption{font-style:italic;color:#555}
pre{background:#f6f6f6;padding:0.8em;overflow-x:auto;font-size:0.8em}
"""


def render_html(doc, out_dir):
    """Self-contained HTML: figures embedded as ``data:image/png;base64`` URIs."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(doc.title)}</h1>"]
    for block in doc.blocks:
        kind = block[0]
        if kind == "heading":
            parts.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "para":
            parts.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "bullets":
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                           for row in block[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "figure":
            path = block[1] if block[1].is_absolute() else Path(out_dir) / block[1]
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
        elif kind == "code":
            parts.append(f"<pre><code>{html.escape(block[1])}</code></pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(doc, out_dir, stem="report"):
    """Write ``{stem}.md`` and ``{stem}.html`` into out_dir; returns (md_path, html_path).

    Raises FileNotFoundError naming any figure that does not exist, before writing."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for block in doc.blocks:
        if block[0] == "figure":
            path = block[1] if block[1].is_absolute() else out_dir / block[1]
            if not path.is_file():
                raise FileNotFoundError(f"report figure {path} does not exist")
    md_path, html_path = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
    md_path.write_text(render_markdown(doc, out_dir), encoding="utf-8")
    html_path.write_text(render_html(doc, out_dir), encoding="utf-8")
    return md_path, html_path


def markdown_links(md_path):
    """Targets of every image link ``![..](target)`` in a Markdown file (for checks)."""
    text = Path(md_path).read_text(encoding="utf-8")
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)


# --------------------------------------------------------------------------- evaluation report
def fmt(value, digits=3):
    """A number for a table cell; None/NaN become a dash."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return NA
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _auc_cell(row):
    if not row["defined"]:
        return f"undefined ({row['undefined_reason']})"
    ci = row.get("auc_ci")
    if ci and ci[0] is not None:
        return f"{row['auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return fmt(row["auc"])


def evaluation_report(metrics, figures, config=None, comparison=None, title=None):
    """The evaluation ``Document``.

    metrics: the dict written to metrics.json (``cxr_tf.evaluation.metrics.summarize`` output
    plus ``split``, ``split_method``, ``records``, ``run_dir``, ``thresholds``);
    figures: {key: png path} with keys among roc, pr, auc_bars, reliability,
    training_curves, label_distribution (missing keys are skipped);
    config: the run's config.json dict; comparison: DataFrame from
    ``cxr_tf.evaluation.literature.comparison_table``."""
    config = config or {}
    arch = config.get("arch", "model")
    split, split_method = metrics.get("split", "test"), metrics.get("split_method")
    external = metrics.get("external")
    default_title = (f"External validation: {arch} on {external['dataset']}, {split} split" if external
                     else f"Evaluation: {arch} on the {split} split")
    doc = Document(title or default_title)
    macro, micro, per = metrics["macro"], metrics["micro"], metrics["per_finding"]
    thr = metrics.get("thresholds") or {}

    doc.heading("Summary")
    ci = macro.get("auc_ci")
    macro_text = fmt(macro["auc"]) + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci and ci[0] is not None else "")
    run_text = f", run `{metrics['run_dir']}`" if metrics.get("run_dir") else ""
    records_text = f"Records `{metrics['records']}`, split" if metrics.get("records") else "Split"
    doc.bullets([
        f"Model: `{arch}`{run_text}",
        f"{records_text} **{split}** ({metrics['num_examples']:,} films, {metrics['num_patients']:,} patients)",
        f"Split method: **{describe_split(split_method)}**",
        f"Macro ROC-AUC: **{macro_text}** over {macro['n_findings']} findings; "
        f"micro ROC-AUC {fmt(micro.get('auc'))}",
        f"Macro average precision {fmt(macro.get('average_precision'))}; "
        f"micro {fmt(micro.get('average_precision'))}",
        f"Thresholds: {thr.get('description', 'none')}",
    ])
    doc.para(f"**Data split.** These results are on the {describe_split(split_method)} "
             f"(`{split}` split). {COMPARABILITY_NOTE}")
    if macro["excluded"]:
        doc.para("**Undefined findings.** " + "; ".join(
            f"{name}: {reason}" for name, reason in macro["excluded"].items())
            + ". Their ROC-AUC and average precision cannot be computed on this split; they are "
              "shown as undefined, not as 0, and the macro averages of AUC and AP leave them out.")

    if metrics.get("caveats"):
        doc.para("**Caveats.** " + " ".join(f"{c[0].upper()}{c[1:]}." for c in metrics["caveats"]))
    if external:
        _external_section(doc, metrics)

    doc.heading("Per-finding results")
    # A "labelled" column only when some finding is missing on some film (-1 labels, e.g. a dataset
    # that does not label it): every per-finding figure is then over those films only.
    partly = any(per[n]["n_known"] < metrics["num_examples"] for n in metrics.get("labels", LABELS))
    header = ["finding", *(["labelled"] if partly else []), "positives", "prevalence", "ROC-AUC [95% CI]", "AP",
              "threshold", "sensitivity", "specificity", "PPV", "NPV", "F1", "Brier", "ECE"]
    rows = []
    for name in metrics.get("labels", LABELS):
        row = per[name]
        rows.append([name, *([fmt(row["n_known"])] if partly else []), fmt(row["n_positive"]),
                     fmt(row["prevalence"]), _auc_cell(row),
                     fmt(row["average_precision"]), fmt(row.get("threshold")), fmt(row.get("sensitivity")),
                     fmt(row.get("specificity")), fmt(row.get("ppv")), fmt(row.get("npv")),
                     fmt(row.get("f1")), fmt(row["brier"]), fmt(row["ece"])])
    doc.table(header, rows)
    if partly:
        doc.para("**Missing labels.** Not every finding is labelled on every film (`labelled`: the films "
                 "where it is). Each finding's prevalence, ROC-AUC, AP, operating point and calibration "
                 "use its labelled films only; a missing label counts neither as positive nor as negative.")
    boot = metrics.get("bootstrap") or {}
    short = [f"{name} ({per[name]['auc_ci_valid_replicates']})" for name in metrics.get("labels", LABELS)
             if per[name]["defined"] and per[name].get("auc_ci_valid_replicates") is not None
             and per[name]["auc_ci_valid_replicates"] < boot.get("n_boot", 0)]
    if short:
        doc.para(f"**Few positives.** In some bootstrap replicates these findings drew no positive (or no "
                 f"negative) film; their intervals use only the replicates where they were defined, of "
                 f"{boot['n_boot']}: {', '.join(short)}. Such intervals are optimistic: read them as a sign "
                 f"that the split is too small for that finding.")
    doc.para("Operating-point metrics count a film positive when its probability is at least the "
             "finding's threshold. A dash means the ratio is undefined (zero denominator: e.g. PPV "
             "when no film is called positive).")

    doc.heading("Averages")
    avg_rows = []
    for label, block in (("macro", macro), ("micro", micro)):
        auc = fmt(block.get("auc"))
        if label == "macro" and ci and ci[0] is not None:
            auc += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
        avg_rows.append([label, auc, fmt(block.get("average_precision")), fmt(block.get("sensitivity")),
                         fmt(block.get("specificity")), fmt(block.get("ppv")), fmt(block.get("npv")),
                         fmt(block.get("f1")), fmt(block.get("brier")), fmt(block.get("ece"))])
    doc.table(["average", "ROC-AUC", "AP", "sensitivity", "specificity", "PPV", "NPV", "F1", "Brier", "ECE"],
              avg_rows)
    doc.para(f"Macro: {macro['note']}; Brier and ECE average all findings with a known label. Micro: every "
             "labelled (film, finding) pair pooled into one binary problem (operating points: confusion counts "
             "summed).")

    if comparison is not None:
        doc.heading("Published results, side by side")
        doc.para(f"Our row is on the {describe_split(split_method)}; each published row names its own "
                 f"split. {COMPARABILITY_NOTE}")
        cols = [*LABELS, "macro"]
        doc.table(["model", "split", *cols],
                  [[r["model"], r["split"], *(fmt(r[c]) for c in cols)] for _, r in comparison.iterrows()])

    doc.heading("Figures")
    captions = {
        "roc": "ROC curves per finding (test films; AUC in each title)",
        "pr": "Precision-recall curves per finding (dotted line: prevalence)",
        "auc_bars": "Per-finding ROC-AUC with 95% patient-bootstrap CI beside published results",
        "reliability": "Reliability diagram: observed fraction positive against predicted probability",
        "training_curves": "Training curves from the run's history.csv",
        "label_distribution": "Findings in the evaluated split",
    }
    for key, caption in captions.items():
        if figures.get(key):
            doc.figure(figures[key], caption)

    doc.heading("Method")
    doc.bullets([
        f"ROC-AUC confidence intervals: {boot.get('method', 'percentile')} bootstrap over **patients** "
        f"({boot.get('n_boot', 0)} replicates, seed {boot.get('seed')}): each replicate draws patients "
        "with replacement and keeps all their films, so a patient's follow-up films move together.",
        f"Thresholds: {thr.get('description', 'none')}. They were chosen on the validation split, "
        "never on the films evaluated here (unless this report is of the validation split itself).",
        "Calibration: Brier score (mean squared error of the probability) and expected calibration "
        f"error over {metrics.get('calibration_bins', 10)} equal-width probability bins.",
        "A finding with no positive (or no negative, or no labelled) film has no ROC-AUC or AP; it is "
        "reported as undefined with the reason and left out of the macro AUC/AP, which say so.",
    ])

    if config:
        doc.heading("Model configuration")
        doc.code(json.dumps(config, indent=2, sort_keys=True, default=str), "json")
    return doc


def _external_section(doc, metrics):
    """External validation: which findings were compared and which not (and why), and the
    run's internal test AUC beside the AUC on these records, per finding."""
    ext, per = metrics["external"], metrics["per_finding"]
    doc.heading("External validation")
    doc.para(f"The model was trained on `{ext.get('internal_records')}` and is evaluated here on other records "
             f"(**{ext['dataset']}**), over the {len(ext['shared'])} findings both label (common names, "
             "`cxr_tf/resources/findings.csv`). The thresholds are the run's, chosen on its own validation "
             "split. The published NIH results are not shown: they are of another population.")
    if ext["left_out"]:
        doc.para("**Left out.** " + "; ".join(f"{name}: {why}" for name, why in ext["left_out"].items()) + ".")
    rows, internal, external = [], [], []
    for name in ext["shared"]:
        a, b = ext["internal_auc"].get(name), per[name]["auc"]
        rows.append([name, fmt(a), _auc_cell(per[name]), fmt(None if a is None or b is None else b - a)])
        if a is not None and b is not None:
            internal.append(a)
            external.append(b)
    if internal:
        rows.append(["macro (findings defined on both)", fmt(sum(internal) / len(internal)),
                     fmt(sum(external) / len(external)), fmt((sum(external) - sum(internal)) / len(internal))])
    doc.table(["finding", "internal test ROC-AUC", "external ROC-AUC [95% CI]", "external − internal"], rows)
