"""``bindu`` — serve an agent, run the devnet or the demo, reconcile, operate payments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from bindu.cli.payments import add_arguments as add_payments_arguments
from bindu.errors import BinduError

Command = Callable[[argparse.Namespace], int]


def _serve(args: argparse.Namespace) -> int:
    from bindu.cli.serve import serve

    return serve(args)


def _devnet(args: argparse.Namespace) -> int:
    from bindu.cli.devnet import devnet

    return devnet(args)


def _demo(args: argparse.Namespace) -> int:
    from bindu.cli.demo import demo

    return demo(args)


def _reconcile(args: argparse.Namespace) -> int:
    from bindu.cli.reconcile import reconcile

    return reconcile(args)


def _payments(args: argparse.Namespace) -> int:
    from bindu.cli.payments import payments

    return payments(args)


def _pay(args: argparse.Namespace) -> int:
    from bindu.cli.pay import pay

    return pay(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bindu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the agent server")
    serve.add_argument("--agent", required=True, help="MODULE:ATTR of the agent callable")
    serve.add_argument("--host", help="bind address (default SERVER__HOST)")
    serve.add_argument("--port", type=int, help="port (default SERVER__PORT)")
    serve.set_defaults(run=_serve)

    devnet = sub.add_parser("devnet", help="run a local chain, token and facilitator")
    devnet.add_argument(
        "--env-file", help="also write the server environment to this file (KEY=VALUE lines)"
    )
    devnet.add_argument(
        "--payee-key-file",
        help="write the payee's private key (mode 600), to send refunds by hand",
    )
    devnet.add_argument(
        "--payer-key-file",
        help="write a funded payer's private key to this file (mode 600), for paying clients",
    )
    devnet.set_defaults(run=_devnet)

    reconcile = sub.add_parser("reconcile", help="run reconciliation outside a server")
    reconcile.add_argument(
        "--once", action="store_true", required=True, help="run one pass and print the verdicts"
    )
    reconcile.set_defaults(run=_reconcile)

    payments = sub.add_parser(
        "payments", help="operators: list, show, export payments; mark orphans refunded"
    )
    add_payments_arguments(payments)
    payments.set_defaults(run=_payments)

    pay = sub.add_parser("pay", help="send one paid message/send (x402) and print the task")
    pay.add_argument("text", help="the message text")
    pay.add_argument("--url", default="http://127.0.0.1:3773", help="the bindu server")
    pay.add_argument("--key-file", required=True, help="file holding the payer's private key")
    pay.add_argument("--no-wait", action="store_true", help="do not wait for the result")
    pay.set_defaults(run=_pay)

    demo = sub.add_parser("demo", help="the paid-task and orphan-recovery story on the devnet")
    demo.add_argument("--storage-url", help="storage for the demo (default: a temporary SQLite)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except BinduError as exc:
        print(f"bindu: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
