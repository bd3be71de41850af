"""The command line: parses arguments, calls the Python API, prints. Errors are one line, exit code 2.

Here: the Typer app, the commands that make and use a model (fit, evaluate, predict, export, serve, extend,
pretrain) and the entry point; the exploring ones (rank, compare, models, demo, fewshot-eval) are in
`cli_explore.py`, registered below in their place in `--help`'s list.
"""

from __future__ import annotations

import json
import os
import sys

import typer

from ._allocator import tune_allocator
from .cli_common import load_api as _api  # the API, imported when a command runs
from .cli_common import out_console
from .cli_explore import compare_methods, demo, fewshot_eval, models, rank_backbones
from .errors import HeadstartError
from .progress import console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="headstart: transfer learning from a pretrained backbone to your data.")

@app.command()
def fit(
    data: str = typer.Argument(..., help="a folder per class (images or .txt files), or a CSV/JSONL/Parquet table "
                               "with path,label (images) or text,label (texts)"),
    out: str = typer.Option("runs/latest", "--out", "-o", help="writes model.hs, metrics.jsonl, report/"),
    backbone: str | None = typer.Option(None, help="registered name, timm:NAME, torchvision:NAME, hf:ORG/NAME, "
                                           "st:ORG/NAME or a bundle path (default: with --strategy auto, the "
                                           "best installed packaged one, measured on DATA; else efficientnet_lite0 "
                                           "for images, minilm_l6 for texts; see `headstart models`)"),
    modality: str = typer.Option("auto", help="auto | image | text (auto: from what DATA holds)"),
    input_col: str | None = typer.Option(None, help="table column with the image path or the text"),
    label_col: str = typer.Option("label", help="table column with the label"),
    strategy: str = typer.Option("auto", help="auto | features | finetune | full | two-stage | truncate | lora "
                                 "| fewshot | setfit | baseline (no transfer: raw pixels or TF-IDF); auto measures "
                                 "your data, races the baseline on validation and says why"),
    time_limit: float | None = typer.Option(None, help="seconds the whole fit may take: auto plans within it, "
                                             "training stops when it runs out"),
    quality: str = typer.Option("fast", help="fast | best: best spends the time limit (default: 10x the fast "
                                "plan's estimate) where held-out rows show a gain (today: setfit on texts)"),
    epochs: int = typer.Option(3, help="epochs of stages that train backbone layers"),
    head_epochs: int | None = typer.Option(None, help="epochs of gradient-trained head stages (torch-mlp; default "
                                            "60; detection: --epochs); a linear head is solved: logistic "
                                            "regression (classes, labels) or ridge (values)"),
    lr: float = typer.Option(1e-3, help="head learning rate; backbone groups get less"),
    batch_size: int | None = typer.Option(None, help="default 32 (detection: 4)"),
    tile_size: int = typer.Option(400, help="detection: large images are cut into tiles of this many pixels"),
    image_size: int | None = typer.Option(None, help="input size (default: the backbone's own)"),
    task: str = typer.Option("classification", help="classification | multilabel | regression | detection "
                             "(DATA: a CSV image_path,xmin,ymin,xmax,ymax,label, a COCO .json or a folder of "
                             "Pascal VOC .xml)"),
    head: str = typer.Option("linear", help="linear | torch-mlp (trainable), or a scikit-learn model on frozen "
                             "features: logistic | svm | random-forest | knn | mlp"),
    last_n: int = typer.Option(2, help="layer groups `finetune` unfreezes"),
    valid: str | None = typer.Option(None, help="validation data (default: a stratified split)"),
    val_fraction: float = typer.Option(0.2),
    scratch: bool = typer.Option(False, "--scratch", help="random initial weights (no transfer)"),
    strict: bool = typer.Option(False, "--strict", help="stop at the first unreadable file instead of skipping"),
    seed: int = typer.Option(0),
    memory: int = typer.Option(0, help="exemplars per class kept in the bundle for `headstart extend` (rehearsal)"),
    mixed_precision: str = typer.Option("auto", help="auto | no | bf16 | fp16 (auto: bf16 on a CUDA GPU that "
                                        "supports it, full precision on CPU)"),
    resume: str | None = typer.Option(None, "--resume", metavar="DIR", help="continue a stopped run from the "
                                      "checkpoint in its output folder DIR (give the same data and options)"),
    unlabeled: str | None = typer.Option(None, help="unlabeled target-domain inputs (folder or file) to adapt to"),
    adapt: str = typer.Option("auto", help="with --unlabeled: auto | adabn | coral | dann"),
    augment: bool = typer.Option(True, help="light random crops and flips on training images"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a model on DATA and write the bundle, metrics and report to --out."""
    out = resume or out  # a resumed run finishes in the folder it started in
    if task == "detection":
        det = _api().ObjectDetector(backbone=backbone, strategy=strategy, epochs=epochs, head_epochs=head_epochs, lr=lr,
                                 batch_size=batch_size or 4, tile_size=tile_size, last_n=last_n,
                                 val_fraction=val_fraction, pretrained=not scratch, seed=seed, out_dir=out,
                                 mixed_precision=mixed_precision, verbose=not quiet)
        det.fit(data, valid=valid)
        out_console.print(_api().summary_line(det.metrics_["validation"], prefix="validation"))
        return
    head_epochs, batch_size = head_epochs or 60, batch_size or 32
    if modality == "auto":
        modality = _api().detect_modality(data, input_col)
    est = _api().estimator_class(modality, task)(
        backbone=backbone, strategy=strategy, input_col=input_col, label_col=label_col, task=task, epochs=epochs,
        head_epochs=head_epochs, lr=lr, time_limit=time_limit, quality=quality,
        batch_size=batch_size, image_size=image_size, head=head, last_n=last_n, val_fraction=val_fraction,
        pretrained=not scratch, strict=strict, seed=seed, out_dir=out, verbose=not quiet,
        mixed_precision=mixed_precision, memory=memory, adapt=adapt, augment=augment,
    )
    est.fit(data, valid=valid, resume=resume, unlabeled=unlabeled)
    out_console.print(_api().summary_line(est.metrics_["validation"], prefix="validation"))


@app.command()
def evaluate(
    bundle: str = typer.Argument(..., help="a model.hs bundle"),
    data: str = typer.Argument(..., help="labeled data, given as for fit"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Score a bundle on labeled data."""
    model = _api().load(bundle)
    model.verbose = not (quiet or as_json)
    metrics = model.evaluate(data)
    if as_json:
        sys.stdout.write(json.dumps(metrics) + "\n")
    else:
        out_console.print(_api().summary_line(metrics, prefix="test"))


@app.command()
def predict(
    bundle: str = typer.Argument(..., help="a model.hs bundle"),
    inputs: list[str] = typer.Argument(..., help="image files/folders; for text models also .txt files, tables "
                                       "(their text column) or the texts themselves"),
    out: str | None = typer.Option(None, "--out", "-o", help="a .csv or .jsonl file, written batch by batch "
                                   "(default: CSV on stdout)"),
    probs: bool = typer.Option(False, "--probs", help="add one probability column per class"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run into the same --out"),
    runtime: str = typer.Option("torch", help="torch | onnx (onnxruntime on the exported graph)"),
    batch_size: int | None = typer.Option(None, help="inputs per batch (default: the bundle's)"),
    column: str | None = typer.Option(None, help="table column with the image path or text (default: path/text)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Predict labels (or values) for any number of inputs: folders, tables (CSV/JSONL/Parquet), files, texts."""
    if resume and not out:
        raise HeadstartError("--resume needs --out FILE: the run continues where FILE stops")
    model = _api().load(bundle, runtime=runtime)
    model.verbose = False
    if isinstance(model, _api().ObjectDetector):  # boxes: one row per box (CSV) or one object per image (JSONL)
        done = _api().predict_boxes(model, inputs, out, batch_size)
        if out:
            console.print(f"wrote {done['boxes']} boxes on {done['images']} images to {out}", highlight=False)
        return
    # under torchrun / accelerate launch each process predicts its part, merged into --out in input order
    done = _api().sharded_predict(model, inputs, out, with_probs=probs, resume=resume, batch_size=batch_size,
                                  column=column, verbose=not quiet, stream=sys.stdout)
    if out:
        console.print(f"wrote {done['rows']} predictions to {out}"
                      + (f" (resumed after {done['resumed_from']})" if done["resumed_from"] else "")
                      + (f" ({done['unreadable']} unreadable)" if done["unreadable"] else ""),
                      soft_wrap=True, highlight=False)


@app.command("export")
def export_bundle(
    bundle: str = typer.Argument(..., help="a model.hs bundle"),
    fmt: str = typer.Option("onnx", "--format", help="onnx | torchscript"),
    out: str | None = typer.Option(None, "--out", "-o", help="output file (default: BUNDLE with .onnx or .pt)"),
    check: list[str] | None = typer.Option(None, "--check", help="inputs for the parity check (files, folders, "
                                           "tables, texts; default: Fashion-MNIST images or sample sentences)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Export the whole pipeline that fits in a graph (normalisation, backbone, head) and check its parity."""
    model = _api().load(bundle)
    model.verbose = False
    path = out or os.path.splitext(bundle)[0] + (".onnx" if fmt == "onnx" else ".pt")
    result = _api().export_model(model, path, fmt, check_inputs=check or None, verbose=not quiet, bundle=bundle)
    if not quiet and "detections_checked" in result:  # a detector: boxes matched one by one on tiles
        out_console.print(f"wrote {result['path']} ({fmt}); every one of {result['detections_checked']} detections "
                          f"on {result['n_checked']} tiles matched, max |box or score difference| "
                          f"{result['max_abs_diff']:.2e}")
    elif not quiet:
        out_console.print(f"wrote {result['path']} ({fmt}); the same decisions, max |score difference| "
                          f"{result['max_abs_diff']:.2e} (tolerance {result['tolerance']:.2e}) on "
                          f"{result['n_checked']} inputs")


@app.command()
def serve(
    bundle: str = typer.Argument(..., help="a model.hs bundle"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000),
    runtime: str = typer.Option("torch", help="torch | onnx"),
    max_batch: int = typer.Option(64, help="inputs per request"),
    max_request_mb: float = typer.Option(32.0, help="request body size limit"),
    max_pixels: int = typer.Option(40_000_000, help="pixels per image (width x height)"),
    max_request_pixels: int = typer.Option(100_000_000, help="pixels per request, summed over its images"),
    max_text_chars: int = typer.Option(10_000, help="characters per text"),
    max_in_flight: int = typer.Option(4, min=1, help="prediction requests held at once; more are answered 503"),
    token: str | None = typer.Option(None, help="API token that requests must send as 'Authorization: Bearer "
                                     "TOKEN' (/health stays open); default: the HEADSTART_TOKEN environment "
                                     "variable, which other users cannot read from the process list"),
) -> None:
    """Serve BUNDLE over HTTP: POST /predict, GET /health, GET /metadata, OpenAPI at /docs."""
    limits = _api().ServeLimits(max_request_bytes=int(max_request_mb * (1 << 20)), max_batch=max_batch,
                         max_pixels=max_pixels, max_text_chars=max_text_chars,
                         max_request_pixels=max_request_pixels, max_in_flight=max_in_flight)
    console.print(f"serving {bundle} on http://{host}:{port} (docs at /docs)")
    _api().serve(bundle, host, port, runtime, limits, token)


app.command("rank")(rank_backbones)  # cli_explore.py's commands, in the order --help lists them
app.command("compare")(compare_methods)
app.command()(models)
app.command()(demo)


@app.command()
def extend(
    bundle: str = typer.Argument(..., help="a fitted classifier bundle (model.hs)"),
    data: str = typer.Argument(..., help="labeled data with the new classes, given as for fit"),
    out: str | None = typer.Option(None, "--out", "-o", help="the extended bundle (default: BUNDLE-extended.hs)"),
    method: str = typer.Option("rehearsal",
                               help="finetune | rehearsal | lwf | ewc (see headstart/methods/continual.py)"),
    valid: str | None = typer.Option(None, help="labeled data with old and new classes, to measure forgetting "
                                     "(default: a split of DATA, new classes only)"),
    old_data: str | None = typer.Option(None, "--old-data", help="old training data: builds the exemplar buffer "
                                        "when the bundle has none (fit with --memory to store one)"),
    memory: int = typer.Option(20, help="exemplars kept per class in the bundle (rehearsal; EWC's Fisher)"),
    epochs: int = typer.Option(30, help="head epochs"),
    lr: float = typer.Option(1e-3),
    as_json: bool = typer.Option(False, "--json", help="the before/after report as JSON on stdout"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its last finished epoch "
                                "(same bundle, data and options; checkpoints are kept in OUT.partial/)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Teach a fitted classifier the new classes in DATA without forgetting the old ones."""
    model = _api().load(bundle)
    model.verbose = not (quiet or as_json)
    target = out or f"{bundle[:-3] if bundle.endswith('.hs') else bundle}-extended.hs"
    folder = f"{target}.partial"  # per-epoch checkpoints, next to the bundle they lead to
    model.extend(data, method=method, valid=valid, old_data=old_data, memory_per_class=memory, epochs=epochs, lr=lr,
                 out_dir=folder, resume=folder if resume else None)
    if _api().is_main_process() and os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)  # its checkpoint is gone with the run it served
    if _api().is_main_process():  # one writer when several processes train together (torchrun)
        model.save(target)
    if as_json:
        sys.stdout.write(json.dumps({**model.last_extension_, "bundle": target}) + "\n")
    else:
        out_console.print(_api().describe(model.last_extension_) + f"\nbundle: {target}", highlight=False)


@app.command()
def pretrain(
    unlabeled: str = typer.Argument(..., help="unlabeled inputs: a folder of images; or a .txt file, table (its "
                                    "text column) or folder of .txt files"),
    backbone: str | None = typer.Option(None, help="the backbone to continue training (default: efficientnet_lite0 "
                                        "for images, minilm_l6 for texts)"),
    out: str = typer.Option("runs/pretrained", "--out", "-o", help="folder for the backbone; then use "
                            "`headstart fit DATA --backbone DIR`"),
    modality: str = typer.Option("auto", help="auto | image | text"),
    epochs: int = typer.Option(5),
    lr: float | None = typer.Option(None, help="default: 1e-3 (SimCLR), 5e-5 (masked LM)"),
    batch_size: int = typer.Option(64),
    image_size: int | None = typer.Option(None, help="input size (default: the backbone's own)"),
    limit: int | None = typer.Option(None, help="use at most this many unlabeled inputs"),
    scratch: bool = typer.Option(False, "--scratch", help="start from random weights instead of pretrained ones"),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out from its last "
                                "finished epoch (same inputs and options)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Self-supervised pre-training on unlabeled data: SimCLR for images, masked LM for texts."""
    if modality == "auto":
        modality = "image" if os.path.isdir(unlabeled) and not any(
            f.endswith(".txt") for f in os.listdir(unlabeled)) else "text"
    settings = _api().PretrainSettings(epochs=epochs, lr=lr, batch_size=batch_size, image_size=image_size,
                                       limit=limit, seed=seed)
    path = _api().pretrain(unlabeled, backbone, out, modality, settings, pretrained=not scratch, verbose=not quiet,
                           resume=resume)
    out_console.print(f"backbone: {path}")


app.command("fewshot-eval")(fewshot_eval)


def main() -> None:
    """The `headstart` console script ([project.scripts]) and `python -m headstart.cli`."""
    # Tuned here, not at import: the allocator setting is process-wide, and a program that merely imports this
    # module (tests, a notebook, an app embedding `app`) keeps its own. Before any command allocates tensors
    # (docs/environment.md: ~3x on CPU).
    tune_allocator()
    try:
        app()
    except HeadstartError as err:
        console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        console.print("interrupted")
        raise SystemExit(130) from None
    except OSError as err:  # disk full, permission denied, ...: still one line
        where = f"{err.filename}: " if err.filename else ""
        console.print(f"[red]error:[/] {where}{err.strerror or err}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
