"""``monorecon serve`` (REST API and web page) and ``monorecon webui``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    CommandError,
    add_device_option,
    add_dtype_option,
    add_own_model_option,
    add_quiet_option,
    checked_device,
    own_model,
)


def _add_server_options(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--weights", help="model weights (default: the bundled model)")
    p.add_argument("--config", type=Path, help="model config.yaml (default: beside the weights)")
    add_own_model_option(p)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default loopback: no authentication)")
    p.add_argument("--port", type=int, default=port, help=f"listen port (default {port})")
    p.add_argument(
        "--allowed-host", action="append", default=[], metavar="NAME",
        help="a Host name clients use to reach the server, besides --host, localhost, 127.0.0.1 and ::1 (others get "
        "HTTP 403, against DNS rebinding); repeatable; '*' allows any (default: none)",
    )  # fmt: skip
    add_dtype_option(p)
    add_device_option(p)
    add_quiet_option(p, "log warnings and errors only (no start-up lines, no line per request)")


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="REST API (POST /reconstruct) with the web page at /")
    _add_server_options(p, 8000)
    p.add_argument("--no-ui", action="store_true", help="serve the API only")
    p.set_defaults(func=_run_serve)


def add_webui(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("webui", help="web page for interactive reconstruction (the REST API runs beside it)")
    _add_server_options(p, 7860)
    p.set_defaults(func=_run_webui)


def _server_kwargs(args: argparse.Namespace) -> dict:
    import torch

    if not 1 <= args.port <= 65535:
        raise CommandError(f"--port must lie in [1, 65535], got {args.port}")
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    return {
        "host": args.host, "port": args.port, "weights": args.weights, "config": args.config,
        "device": checked_device(args), "dtype": dtype, "model": None if args.model is None else own_model(args),
        "log_level": "warning" if args.quiet else "info", "allowed_hosts": tuple(args.allowed_host),
    }  # fmt: skip


def _run_serve(args: argparse.Namespace) -> int:
    from ..server import run_server

    run_server(**_server_kwargs(args), ui=not args.no_ui)
    return 0


def _run_webui(args: argparse.Namespace) -> int:
    from ..webui import launch_ui

    launch_ui(**_server_kwargs(args))
    return 0
