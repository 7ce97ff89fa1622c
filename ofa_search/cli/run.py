"""``ofa-search run``: run a binary package (``.ofab``) or a plain ``.onnx`` model on a
``.npy`` array or on a dataset's test split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ofa_search.cli.options import JsonOpt, emit_json
from ofa_search.errors import OfaSearchError

app = typer.Typer()


@app.command("run")
def run_cmd(
    package: Annotated[Path, typer.Argument(
        help="binary package (.ofab) or ONNX model (.onnx)")],
    input_file: Annotated[Path | None, typer.Option(
        "--input", "-i", help=".npy array [N, C, H, W] (or one [C, H, W] sample)")] = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="dataset whose test split to score: digits or fashion-mnist")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="test samples (with --data)")] = 256,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    backend: Annotated[str, typer.Option(
        "--backend", help="binary kernels: auto (TVM when installed), tvm or numpy")
    ] = "auto",
    threads: Annotated[int, typer.Option("--threads", min=1, max=1024,
                                         help="ONNX Runtime and TVM threads")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Run a binary package or ONNX model: print predictions, or accuracy on --data."""
    if (input_file is None) == (data is None):
        raise OfaSearchError("give --input X.npy or --data NAME (not both)")
    # deferred: each command imports only the library parts it runs (CLI start-up)
    from ofa_search.binary.predict import evaluate, load_npy, open_classifier, predict

    model, kind = open_classifier(package, threads=threads, backend=backend)
    info: dict[str, Any] = {"model": str(package), "kind": kind,
                            "backend": getattr(model, "backend", "onnxruntime"),
                            "arch": getattr(model, "arch", None)}
    if data is not None:
        result = {**info, **evaluate(model, data, n, data_dir)}
        if as_json:
            emit_json(result)
            return
        typer.echo(f"{kind} {package} ({info['backend']}): accuracy "
                   f"{result['accuracy']:.4f} ({result['correct']}/{result['samples']}) "
                   f"on the {data} test split")
        return
    assert input_file is not None
    try:
        x = load_npy(input_file)
    except EOFError:  # numpy's reader on an empty file (click would make it "aborted")
        raise OfaSearchError(f"cannot read {input_file} as a .npy array: the file is "
                             "empty") from None
    logits = predict(model, x)
    predictions = logits.argmax(axis=1)
    if as_json:
        emit_json({**info, "predictions": predictions.tolist(),
                    "logits": logits.tolist()})
        return
    for i, (label, row) in enumerate(zip(predictions, logits, strict=True)):
        typer.echo(f"{i}: class {int(label)} (logit {float(row[label]):.4f})")
