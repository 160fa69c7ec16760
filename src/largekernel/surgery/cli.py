"""``largekernel convert``: convert and/or bake a registered model or a trained checkpoint, print the report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from largekernel._files import replacing
from largekernel._argparse import ArgumentParser, print_usage_error, writable_dir
from largekernel.models.layers import conv_types
from largekernel.nn._base import KernelConvNd
from largekernel.surgery.bake import bake
from largekernel.surgery.convert import convert

__all__ = ["main"]


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints such as 1,3,32,32, got {text!r}") from None


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="largekernel convert",  # dashed flags, underscores accepted, one-line errors
                                description="Convert a model's convolutions to a large-kernel family and/or bake "
                                            "learnable kernels into plain convolutions; print the report.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="registered model name (largekernel.models.list_models())")
    src.add_argument("--checkpoint", help="checkpoint or run directory written by `largekernel train`")
    p.add_argument("--model-kwargs", type=_json_dict, default={}, help='JSON, e.g. \'{"num_classes": 10}\'')
    p.add_argument("--to", choices=conv_types(), metavar="FAMILY", help=f"target family: {', '.join(conv_types())}")
    p.add_argument("--which", help="module-name pattern of the convolutions to replace (default: depthwise ones)")
    p.add_argument("--iso-params", action="store_true", help="match the original parameter count")
    p.add_argument("--layer-kwargs", type=_json_dict, default={}, help='JSON, e.g. \'{"kernel_size": 17}\'')
    p.add_argument("--bake", action="store_true", help="then bake learnable kernels into plain convolutions")
    p.add_argument("--native", action="store_true",
                   help="with --bake: torch's own Conv{n}d modules everywhere (for ONNX, TensorRT and other "
                        "runtimes) instead of largekernel.nn.Conv{n}d with each layer's backend")
    p.add_argument("--input-size", type=_int_list, help="model input shape with batch, e.g. 1,3,32,32 "
                   "(needed to bake input-sized kernels, to count FLOPs and to write .pt2)")
    p.add_argument("--out", help="write the model: FILE.pt2 = torch.export program (needs --input-size), "
                   "otherwise torch.save of the module (load with torch.load(FILE, weights_only=False))")
    return p


def main(argv: list[str] | None = None) -> int:
    """``largekernel convert``: returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.to is None and not args.bake:
        return print_usage_error(parser.prog, "nothing to do; give --to FAMILY and/or --bake")
    if args.native and not args.bake:
        return print_usage_error(parser.prog, "--native goes with --bake")
    if args.out and args.out.endswith(".pt2") and args.input_size is None:
        return print_usage_error(parser.prog, "--out FILE.pt2 needs --input-size")
    if args.out:  # before the work, not after it
        if Path(args.out).is_dir():
            return print_usage_error(parser.prog, f"--out {args.out!r}: expected a file name, got a folder")
        writable_dir(parser.prog, f"--out {args.out!r}: its folder", Path(args.out).parent)
    # A bad value (an unknown model, a keyword it does not take, a shape it refuses) is one line naming the flag,
    # not a traceback: each step's own errors say what was wrong, the flag says where it came from.
    step = "--checkpoint" if args.checkpoint else "--model / --model-kwargs"
    try:
        if args.checkpoint:
            from largekernel.train.checkpoint import load_checkpoint

            model = load_checkpoint(args.checkpoint)[0]
        else:
            from largekernel.models import create_model

            model = create_model(args.model, **args.model_kwargs)
        model.eval()
        if args.input_size:
            from largekernel.analysis.flops import count

            step = "--input-size"
            print(f"before: {count(model, args.input_size)}")
        if args.to:
            step = "--to / --which / --layer-kwargs"
            model, rep = convert(model, args.to, args.which, iso_params=args.iso_params, report=True,
                                 **args.layer_kwargs)
            print(rep)
        if args.bake:
            step = "--bake"
            sized = [name for name, m in model.named_modules() if isinstance(m, KernelConvNd) and m.input_dependent]
            if sized and args.input_size is None:
                return print_usage_error(parser.prog, f"--bake needs --input-size (the model's input shape with "
                                                      f"batch): the kernels of {sized} depend on the input size")
            before = sum(1 for m in model.modules() if isinstance(m, KernelConvNd))
            bake(model, args.input_size, native=args.native)
            print(f"baked {before} learnable-kernel layer(s) into plain convolutions"
                  + (" (torch's own)" if args.native else ""))
        if args.input_size:
            step = "--input-size"
            print(f"after: {count(model, args.input_size)}")
    except (ValueError, TypeError, FileNotFoundError) as error:
        return print_usage_error(parser.prog, f"{step}: {error}")
    if args.out:
        _write(model, Path(args.out), args.input_size)
        print(f"wrote {args.out}")
    return 0


def _write(model: torch.nn.Module, out: Path, input_size) -> None:
    """Save ``model`` to ``out`` whole or not at all: into a file beside it, then renamed (an interrupted or failed
    write leaves the previous file, if any, as it was)."""
    with replacing(out) as tmp:
        if out.suffix == ".pt2":
            torch.export.save(torch.export.export(model, (torch.zeros(input_size),)), tmp)
        else:
            torch.save(model, tmp)


