"""Train the TensorFlow tutorial's CNN on MNIST with arraycnn: the main job.

    python examples/mnist.py                                  # NumPy; offline it uses the 5,000 bundled digits
    python examples/mnist.py --backend cupy                   # the same run on a GPU
    python examples/mnist.py --model vgg                      # vgg_digits: BatchNorm and Dropout instead
    python examples/mnist.py --dataset fashion_mnist --source idx --data-dir /usr/share/datasets/fashion-mnist
    python examples/mnist.py --save run.npz                   # checkpoint after every epoch
    python examples/mnist.py --resume run.npz --epochs 20     # continue to 20 epochs in total
    mpiexec -n 4 python -m mpi4py examples/mnist.py --distributed   # data-parallel over 4 processes

Prints a config header, a progress bar (plain lines when stdout is not a terminal) and one summary line per
epoch, then ten test digits' predicted vs true labels, as the tutorial's last cell.

Resuming: settings not given on the command line (data, sizes, batch size, optimizer, learning rate, dtype,
seed, augmentation, conv method) are taken from the checkpoint, so ``--resume PATH --epochs N`` replays the
uninterrupted run exactly; one that is given and differs is used and reported.

Distributed (``--distributed``, docs/distributed.md): every rank of the MPI job trains on its rows of each
global batch (``--batch-size`` is the global batch) and the gradients are summed over the ranks, so the run
follows the one-process run; with ``--backend cupy`` each rank takes the GPU of its local rank unless
``--device`` says otherwise; NumPy threads per rank default to the machine's cores over its ranks. Only
rank 0 prints and writes files; a rank that fails ends the whole job.

Exit status: 0 done; 1 training diverged: the loss became NaN/inf or exceeded 100 x ln 10 = 230 (see
``arraycnn.train.loss_limit``; the last good checkpoint is kept); 2 bad arguments (checked before anything is
loaded), data or checkpoint; 130 interrupted by Ctrl-C (the state after the last completed epoch is saved
first, to --save or to ``<dataset>_interrupted.npz``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from _cli import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    add_data_arguments,
    add_placement_arguments,
    int_at_least,
    learning_rate,
)

import arraycnn
from arraycnn import data
from arraycnn.backend import BackendUnavailableError, backend_name, get_namespace, resolve_device, to_numpy
from arraycnn.checkpoint import read_npz
from arraycnn.distributed import Communicator, DistributedUnavailableError, get_communicator
from arraycnn.execution import default_execution
from arraycnn.models import tutorial_cnn, vgg_digits
from arraycnn.optim import SGD, Adam
from arraycnn.train import TrainingDivergedError, fit, load_training_state

# The defaults reach >= 95 % held-out accuracy on the bundled digits (4,000 train / 1,000 test) from epoch 6 on;
# the README states the default command's measured accuracy and time (15 to 16 s for seeds 0-4 on an idle 2-core CPU).
DEFAULTS: dict[str, Any] = {
    "dataset": "mnist", "source": "auto", "data_dir": None, "train_size": None, "test_size": None,
    "batch_size": 32, "optimizer": "adam", "lr": None, "dtype": "float32", "seed": 0,
    "conv_method": "im2col", "augment": True, "model": "tutorial",
}
DEFAULT_EPOCHS = 12
# --model: the network and how the header names it
MODELS = {
    "tutorial": ("the tutorial's CNN",
                 "tutorial_cnn ((Conv 10@3x3 - ReLU - MaxPool 3x3/1) x2 - Dense 50 - ReLU - Dense 10)"),
    "vgg": ("a VGG-style CNN",
            "vgg_digits ((Conv 3x3 pad 1 - BatchNorm - ReLU) x2 - MaxPool 2, 16 then 32 filters; "
            "Dense 128 - ReLU - Dropout 0.5 - Dense 10)"),
}
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.05}
SGD_MOMENTUM = 0.9
SHOW_PREDICTIONS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; settings a checkpoint can supply default to None (resolved in :func:`settings`)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Settings marked * are taken from the checkpoint on --resume unless given. "
               "Exit status: 0 done, 1 diverged (NaN/inf loss), 2 bad arguments/data/checkpoint, 130 Ctrl-C.")
    add_placement_arguments(p)
    add_data_arguments(p, resumable=True)
    p.add_argument("--epochs", type=int_at_least(0), default=DEFAULT_EPOCHS,
                   help=f"the TOTAL number of epochs, also on --resume (0: evaluate the untrained network); "
                        f"default {DEFAULT_EPOCHS}")
    p.add_argument("--batch-size", type=int_at_least(1), help=f"* default {DEFAULTS['batch_size']}")
    p.add_argument("--lr", type=learning_rate,
                   help=f"* default {DEFAULT_LR['adam']} (adam), {DEFAULT_LR['sgd']} (sgd)")
    p.add_argument("--optimizer", choices=("adam", "sgd"),
                   help=f"* adam (Keras's form, eps 1e-7) or sgd with momentum {SGD_MOMENTUM}; default adam")
    p.add_argument("--dtype", choices=arraycnn.backend.DTYPES, help="* default float32")
    p.add_argument("--seed", type=int_at_least(0),
                   help="* seeds the weights, the data split and every epoch's order; default 0")
    p.add_argument("--model", choices=tuple(MODELS), help="* the tutorial's network or vgg_digits; default tutorial")
    p.add_argument("--conv-method", choices=("im2col", "toeplitz"), help="* default im2col (toeplitz: tutorial only)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help=f"* random shifts of up to {data.AUGMENT_MAX_SHIFT} pixels; default on")
    p.add_argument("--plot", type=Path, metavar="PATH", help="write loss and accuracy curves to this PNG")
    p.add_argument("--plot-dir", type=Path, metavar="DIR",
                   help="write the pictures of training to DIR: curves, first-layer filters, feature maps of one "
                        "digit, confusion matrix, most confidently misclassified digits")
    p.add_argument("--save", type=Path, metavar="PATH", help="write a checkpoint (.npz) after every epoch")
    p.add_argument("--resume", type=Path, metavar="PATH", help="continue from a checkpoint written by --save")
    p.add_argument("--metrics-json", type=Path, metavar="PATH", help="write the run's metrics as JSON")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of an MPI job: mpiexec -n 4 python -m mpi4py "
                        "examples/mnist.py --distributed (needs the mpi extra); --batch-size is the global batch")
    args = p.parse_args(argv)
    if args.model == "vgg" and args.conv_method == "toeplitz":
        p.error("--conv-method toeplitz unrolls the tutorial's small convolutions only; --model vgg uses im2col")
    if args.source == "bundled" and args.dataset == "fashion_mnist":
        p.error("--source bundled holds mnist only; use --source auto, tfds or idx for fashion_mnist")
    if args.source == "idx" and args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        p.error(f"--data-dir {args.data_dir} is not a directory (--source idx reads the four IDX files from one)")
    if args.resume is not None and not args.resume.is_file():
        p.error(f"checkpoint {args.resume} does not exist (--resume)")
    if (args.plot or args.plot_dir) and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot and --plot-dir need matplotlib: pip install 'arraycnn[plot]'")
    return args


def settings(args: argparse.Namespace, saved: dict[str, Any] | None, log: Any) -> dict[str, Any]:
    """Each setting from the command line, else the checkpoint's ``config``, else :data:`DEFAULTS`."""
    resolved = {}
    for key, default in DEFAULTS.items():
        given = getattr(args, key)
        if given is None:
            resolved[key] = saved[key] if saved is not None and key in saved else default
            continue
        if saved is not None and key in saved and saved[key] != given and not (key == "source" and given == "auto"):
            log(f"note: --{key.replace('_', '-')} {given} differs from the checkpoint's {saved[key]}: "
                "the resumed run will not replay the uninterrupted one")
        resolved[key] = given
    if resolved["lr"] is None:
        resolved["lr"] = DEFAULT_LR[resolved["optimizer"]]
    return resolved


def make_optimizer(name: str, lr: float) -> Adam | SGD:
    return Adam(lr) if name == "adam" else SGD(lr, momentum=SGD_MOMENTUM)


def header(cfg: dict[str, Any], ds: data.Dataset, model: Any, args: argparse.Namespace, start: int) -> str:
    optim = f"Adam lr {cfg['lr']:g}" if cfg["optimizer"] == "adam" else f"SGD lr {cfg['lr']:g} momentum {SGD_MOMENTUM}"
    augment = f"random shifts up to {data.AUGMENT_MAX_SHIFT} px" if cfg["augment"] else "off"
    training = (f"epochs {start + 1}..{args.epochs}, batch {cfg['batch_size']}, {optim}, augment {augment}, "
                f"seed {cfg['seed']}" if args.epochs > start else
                f"none (--epochs {args.epochs}, {start} done): the {'untrained ' * (start == 0)}network is evaluated")
    lines = [
        f"arraycnn {arraycnn.__version__}: {MODELS[cfg['model']][0]} on {cfg['dataset']}",
        f"  data      {ds.description}",
        f"  backend   {backend_name(model.xp)}, {model.dtype_name}, conv {cfg['conv_method']}",
        f"  model     {MODELS[cfg['model']][1]}, {model.num_parameters():,} parameters",
        f"  training  {training}",
    ]
    if args.resume:
        lines.append(f"  resumed   from {args.resume} after epoch {start}")
    if args.save:
        lines.append(f"  saving    a checkpoint to {args.save} after every epoch")
    return "\n".join(lines)


def show_predictions(model: Any, ds: data.Dataset, count: int = SHOW_PREDICTIONS) -> str:
    """The tutorial's last cell: predicted vs true labels of the first ``count`` test images."""
    images, labels = ds.test_images[:count], ds.test_labels[:count]
    logits = model.predict(model.to_device_inputs(images))
    predicted = to_numpy(model.xp.argmax(logits, axis=1))
    right = int(np.sum(predicted == labels))
    names = data.class_names(ds)
    shown = (lambda ids: ids.tolist()) if ds.name == "mnist" else (lambda ids: [names[i] for i in ids])
    return (f"{len(labels)} test images (as the tutorial's last cell):\n"
            f"  predicted: {shown(predicted)}\n  true:      {shown(labels)}   ({right}/{len(labels)} correct)")


def final_scores(model: Any, ds: data.Dataset, history: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """``(test loss, test accuracy)`` of the last epoch, or of the untrained network when none ran (--epochs 0)."""
    if history:
        return history[-1].get("test_loss"), history[-1].get("test_acc")
    return model.evaluate(ds.test_images, ds.test_labels)


def write_metrics(path: Path, cfg: dict[str, Any], ds: data.Dataset, model: Any, args: argparse.Namespace,
                  history: list[dict[str, Any]], status: str, seconds: float,
                  final: tuple[float | None, float | None] = (None, None)) -> None:
    """The run's settings, history and ``final`` (test loss, test accuracy) as JSON, with the class names."""
    metrics = {
        "arraycnn": arraycnn.__version__, "status": status, "backend": backend_name(model.xp),
        "dtype": model.dtype_name, "dataset": ds.name, "source": ds.source, "train_size": len(ds.train_labels),
        "test_size": len(ds.test_labels), "epochs": args.epochs, "batch_size": cfg["batch_size"],
        "optimizer": cfg["optimizer"], "lr": cfg["lr"], "seed": cfg["seed"], "augment": cfg["augment"],
        "model": cfg["model"], "conv_method": cfg["conv_method"],
        "resumed_from": None if args.resume is None else str(args.resume),
        "class_names": list(data.class_names(ds)), "history": history, "final_test_accuracy": final[1],
        "final_test_loss": final[0],
        "wall_seconds": seconds,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")


def communicator(args: argparse.Namespace) -> tuple[Communicator, Any]:
    """The ranks of the run (one process without ``--distributed``) and this rank's device: ``--device``,
    else with CuPy over several ranks the GPU of the local rank."""
    xp = get_namespace(args.backend)
    device = resolve_device(xp, args.device)
    comm = get_communicator(args.distributed, xp, getattr(device, "id", None))
    if device is None and comm.size > 1 and backend_name(xp) == "cupy":
        device = resolve_device(xp, comm.local_rank)  # one GPU per rank
    return comm, device


def prepare(args: argparse.Namespace, log: Any, comm: Communicator | None = None,
            device: Any = None) -> tuple[dict[str, Any], data.Dataset, Any, Any, int, list]:
    """Settings, data, model, optimizer, start epoch and history (from ``--resume`` when given), the model
    executed over the ranks of ``comm`` (default one process) on ``device`` (default ``--device``)."""
    xp = get_namespace(args.backend)
    device = resolve_device(xp, args.device) if device is None else device
    saved_meta = read_npz(args.resume)[1] if args.resume is not None else None
    cfg = settings(args, None if saved_meta is None else saved_meta.get("config", {}), log)
    ds = data.load_dataset(cfg["dataset"], cfg["source"], cfg["data_dir"], cfg["train_size"], cfg["test_size"],
                           seed=cfg["seed"], log=log)
    cfg["source"] = ds.source  # resuming a run that chose 'auto' reads the same source again
    if cfg["model"] == "tutorial":
        model = tutorial_cnn(xp, cfg["dtype"], cfg["seed"], cfg["conv_method"], device=device)
    elif cfg["conv_method"] != "im2col":
        raise ValueError(f"--conv-method {cfg['conv_method']} unrolls the tutorial's small convolutions only; "
                         "--model vgg uses im2col")
    else:
        model = vgg_digits(xp, cfg["dtype"], cfg["seed"], device=device)
    if comm is not None and comm.size > 1:
        if any(layer.mixes_rows for layer in model.layers):
            raise ValueError(f"--distributed needs a network whose layers treat the rows of a batch independently; "
                             f"--model {cfg['model']} mixes them (BatchNorm, Dropout): use --model tutorial")
        model.execution = default_execution(xp, comm)  # threads: this machine's cores over its ranks
    optimizer = make_optimizer(cfg["optimizer"], cfg["lr"])
    if args.resume is None:
        return cfg, ds, model, optimizer, 0, []
    state = load_training_state(args.resume, model, optimizer)
    if args.lr is not None:
        optimizer.lr = args.lr  # the checkpoint restored its own learning rate; an explicit --lr wins
    cfg["lr"] = optimizer.lr
    return cfg, ds, model, optimizer, state.epoch, state.history


def train(args: argparse.Namespace, log: Any) -> int:
    """Prepare, train, report; returns the exit status. Over several ranks only rank 0 logs and writes."""
    started = time.perf_counter()
    try:
        comm, device = communicator(args)
        if not comm.is_root:
            log = _silent
        cfg, ds, model, optimizer, start, history = prepare(args, log, comm, device)
    except (FileNotFoundError, ValueError, ImportError, BackendUnavailableError, DistributedUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log(header(cfg, ds, model, args, start))
    if comm.size > 1:
        log(f"  ranks     {comm.size} processes ({type(comm).__name__}), about {cfg['batch_size'] / comm.size:g} "
            f"rows of each batch per rank, {getattr(model.execution, 'threads', 1)} thread(s) per rank")
    interrupt_path = args.save or Path(f"{cfg['dataset']}_interrupted.npz")
    status, code = "completed", 0
    history = list(history)  # fit appends to its own copy; on_epoch_end keeps this one current if it stops early
    try:
        fit(model, ds, optimizer, epochs=args.epochs, batch_size=cfg["batch_size"], seed=cfg["seed"],
            augment=cfg["augment"], start_epoch=start, history=history, checkpoint_path=args.save,
            interrupt_path=interrupt_path, checkpoint_meta={"config": cfg}, on_epoch_end=history.append, log=log)
    except KeyboardInterrupt:
        status, code = "interrupted", EXIT_INTERRUPTED
        again = "mpiexec -n N python -m mpi4py" if args.distributed else "python"
        log(f"continue with: {again} {sys.argv[0]} --resume {interrupt_path} --epochs {args.epochs}"
            + (" --distributed" if args.distributed else ""))
    except TrainingDivergedError:
        status, code = "diverged", EXIT_DIVERGED
    seconds = time.perf_counter() - started
    if comm.is_root:
        report(args, cfg, ds, model, history, status, code, seconds, log)
    comm.barrier()  # leave together: under mpiexec a rank that exits non-zero first would end rank 0's report
    return code


def report(args: argparse.Namespace, cfg: dict[str, Any], ds: data.Dataset, model: Any,
           history: list[dict[str, Any]], status: str, code: int, seconds: float, log: Any) -> None:
    """Rank 0's end of a run: predictions, final accuracy, metrics JSON and pictures."""
    final = final_scores(model, ds, history) if code == 0 else (None, None)
    if code == 0:
        log(show_predictions(model, ds))
        untrained = "" if history else " (the untrained network: no epoch was trained)"
        log(f"final test accuracy {final[1]:.2%} on {len(ds.test_labels):,} test images{untrained}; "
            f"{seconds:.1f} s in all")
    if args.metrics_json:
        write_metrics(args.metrics_json, cfg, ds, model, args, history, status, seconds, final)
    if args.plot and history:
        from arraycnn.plot import plot_history

        log(f"learning curves: {plot_history(history, args.plot, augment=cfg['augment'])}")
    elif args.plot:
        log(f"learning curves: none written to {args.plot} (no epoch was trained)")
    if args.plot_dir and code in (0, EXIT_INTERRUPTED):
        from arraycnn.plot import save_training_plots

        paths = save_training_plots(model, history, ds.test_images, ds.test_labels, args.plot_dir,
                                    class_names=data.class_names(ds), augment=cfg["augment"])
        log(f"pictures: {', '.join(str(p) for p in paths.values())}")


def _silent(message: str) -> None:
    """The log of every rank but 0."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        code = train(args, print)
    except KeyboardInterrupt:  # outside the epochs (loading data, the final report): nothing to save
        print("interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BaseException:
        if args.distributed:
            traceback.print_exc()
            end_job(1)
        raise
    if code and args.distributed:
        end_job(code)
    return code


def end_job(code: int) -> None:
    """A rank that fails alone must not leave the others waiting for it: end every rank with ``code``, as
    ``python -m mpi4py`` does (nothing to do when MPI never started or runs one rank)."""
    try:
        comm = get_communicator(True)
    except DistributedUnavailableError:
        return
    if comm.size > 1:
        comm.abort(code)


if __name__ == "__main__":
    sys.exit(main())
