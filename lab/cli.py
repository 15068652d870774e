"""The `lab` command (typer). Thin: it validates and delegates; heavy modules load lazily.

Every user-caused error (bad values, port in use, missing privileges, bad files) ends as one line
`lab: error: ...` on stderr and exit status 2 — never a traceback.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from lab.errors import LabError
from lab.i18n import N_

app = typer.Typer(
    name="lab",
    help=N_(
        "wirelab: put TCP and UDP side by side on real sockets.\n\n"
        "Start with `lab demo` (the classroom demo: TCP vs UDP over the same lossy link), or\n"
        "`lab serve both` in one terminal and `lab send udp 127.0.0.1 7007` in another."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DEFAULT_PORT = 7007  # echo's well-known port is 7 (RFC 862); 7007 needs no privileges


class ServeWhich(StrEnum):
    tcp = "tcp"
    udp = "udp"
    both = "both"
    discard = "discard"  # the discard sink of bulk flows (lab.endpoints.sink)


def _protocol_choices() -> type[StrEnum]:
    """`lab send`'s choices: every registered protocol, plugins included (lab.protocols.registry)."""
    from lab.protocols import names

    return StrEnum("Proto", {name: name for name in names()})  # type: ignore[return-value]


Proto = _protocol_choices()


class Layer(StrEnum):
    ip = "ip"
    udp = "udp"
    tcp = "tcp"
    app = "app"


class Direction(StrEnum):
    both = "both"
    forward = "forward"
    reverse = "reverse"


# Read by `main` before the command line is parsed (help texts too are in this language); the
# commands only declare it so that it shows in their --help.
LANG = typer.Option(None, "--lang", metavar="en|pt", help=N_(
    "Language of the output: en or pt (default: from LANG, e.g. LANG=pt_BR.UTF-8)."))


@app.command(help=N_(
    "Run RFC 862 echo servers: TCP echoes the byte stream, UDP echoes each datagram.\n\n"
    "Any echo client works against them (nc, socat, `lab send`). Ctrl-C prints a stats line.\n\n"
    "`lab serve discard` runs the RFC 863 discard sink of bulk flows instead (TCP and UDP, port 9009 "
    "by default): it counts what arrives, in order and intact, for `lab send PROTO HOST 9009 --bulk`.\n\n"
    "Example: lab serve both --port 7007   then   nc 127.0.0.1 7007"
))
def serve(
    which: ServeWhich = typer.Argument(..., help=N_(
        "tcp, udp, or both (same port number); discard: the sink of bulk flows.")),
    host: str = typer.Option("127.0.0.1", help=N_("Address to listen on (loopback by default).")),
    port: int | None = typer.Option(None, "--port", "-p", min=0, max=65535, help=N_(
        "Port (0 = any free; default 7007, discard 9009).")),
    max_conns: int = typer.Option(256, min=1, max=100_000, help=N_(
        "TCP connections at once; when full, the longest-idle one is closed to make room.")),
    idle_timeout: float = typer.Option(60.0, min=0.0, max=86_400.0, help=N_(
        "Close a TCP connection idle this many seconds (0 = never).")),
    max_datagram: int = typer.Option(65507, min=0, max=65507, help=N_("Largest UDP datagram echoed.")),
    udp_rate_limit: float = typer.Option(100_000.0, min=0.0, max=1e9, help=N_(
        "UDP answers per second per source address, beyond it datagrams go unanswered (0 = no limit).")),
    lang: str | None = LANG,
) -> None:
    if which == ServeWhich.discard:
        from lab.endpoints.sink import DISCARD_PORT
        from lab.endpoints.sink import serve_command as serve_discard

        raise typer.Exit(serve_discard(host, DISCARD_PORT if port is None else port, max_conns, idle_timeout))
    from lab.endpoints.server import serve_command

    raise typer.Exit(serve_command(which.value, host, DEFAULT_PORT if port is None else port, max_conns,
                                   idle_timeout, max_datagram, udp_rate_limit=udp_rate_limit))


@app.command(help=N_(
    "Measure RTT, loss, jitter, reordering against any echo server (ours, socat, ...).\n\n"
    "With --bulk, send as fast as the protocol allows (UDP: at --rate) to a discard sink "
    "(`lab serve discard`) and print goodput per interval, as iperf3 does.\n\n"
    "Example: lab send udp 127.0.0.1 7007 --count 1000 --rate 500\n\n"
    "Example: lab send tcp 127.0.0.1 9009 --bulk --duration 5"
))
def send(
    protocol: Proto = typer.Argument(..., help=N_("The protocol (`lab protocols` describes each).")),
    host: str = typer.Argument(..., help=N_("Echo server address, e.g. 127.0.0.1.")),
    port: int = typer.Argument(..., min=1, max=65535, help=N_("Echo server port.")),
    count: int = typer.Option(100, "--count", "-c", min=1, max=10_000_000, help=N_("Probes to send.")),
    size: int | None = typer.Option(None, "--size", "-s", min=32, max=65507, help=N_(
        "Bytes per probe on the wire (32-byte header + payload; default 64); with --bulk, per "
        "datagram (default 1200).")),
    rate: str | None = typer.Option(None, "--rate", "-r", help=N_(
        "Probes/s, paced open loop (default: ping-pong, one in flight). With --bulk: a bit rate "
        "such as 20mbit (udp, udplite and quic-datagram need one).")),
    timeout: float = typer.Option(1.0, "--timeout", "-t", help=N_("Seconds before a probe counts as lost.")),
    window: int | None = typer.Option(None, "--window", "-w", min=1, help=N_(
        "Segments in flight, for protocols with a window (the ARQ ones: default 8); others ignore it.")),
    bulk: bool = typer.Option(False, "--bulk", help=N_(
        "Bulk traffic to a discard sink instead of probes to an echo server.")),
    duration: float = typer.Option(5.0, "--duration", help=N_("With --bulk: seconds to send.")),
    max_bytes: str | None = typer.Option(None, "--bytes", help=N_(
        "With --bulk: stop after this many bytes, e.g. 100mb (tc units, powers of 1024).")),
    interval: float = typer.Option(1.0, "--interval", "-i", help=N_(
        "With --bulk: seconds per goodput line.")),
    as_json: bool = typer.Option(False, "--json", help=N_("Print one result object as JSON.")),
    lang: str | None = LANG,
) -> None:
    if bulk:
        from lab.bulk.summary import send_bulk_command

        plan = bulk_plan(duration, max_bytes, rate, size, interval, window)
        raise typer.Exit(send_bulk_command(protocol.value, host, port, plan, as_json))
    from lab.endpoints.client import send_command
    from lab.records import TrafficPlan

    probes_per_s = probe_rate(rate)
    if timeout <= 0:
        raise LabError(f"--timeout must be a positive number of seconds, got {timeout}")
    plan = TrafficPlan(count=count, size=64 if size is None else size, rate=probes_per_s, timeout=timeout,
                       window=window)
    raise typer.Exit(send_command(protocol.value, host, port, plan, as_json))


def probe_rate(rate: str | None) -> float | None:
    """--rate without --bulk: probes per second, a positive number."""
    if rate is None:
        return None
    try:
        value = float(rate)
    except ValueError:
        raise LabError(f"--rate is probes per second (a number such as 500), got {rate!r}; a bit rate "
                       "such as 20mbit is for bulk traffic (--bulk)") from None
    if value <= 0:  # NaN, inf and the run's length: TrafficPlan says what is wrong
        raise LabError(f"--rate must be a positive number of messages per second, got {rate}")
    return value


def bulk_plan(duration: float, max_bytes: str | None, rate: str | None, size: int | None,
              interval: float, window: int | None) -> Any:
    """--bulk's options as a lab.bulk.BulkPlan (--rate is a bit rate with a unit here)."""
    from lab.bulk import MAX_BULK_BYTES, BulkPlan
    from lab.link.params import parse_rate, parse_size

    rate_bps = None
    if rate is not None:
        try:
            float(rate)
        except ValueError:
            rate_bps = parse_rate(rate, key="rate")
        else:
            raise LabError(f"with --bulk, --rate is a bit rate with a unit such as 20mbit or 500kbit, "
                           f"got {rate!r}")
    budget = parse_size(max_bytes, key="bytes", minimum=1, maximum=MAX_BULK_BYTES) if max_bytes else None
    given = {"size": size} if size is not None else {}  # else BulkPlan's own default
    return BulkPlan(duration_s=duration, max_bytes=budget, rate_bps=rate_bps,
                    interval_s=min(interval, duration), window=window, **given)


# --- impairment options: one list (lab.link.models.OPTION_KEYS) for `lab link` and `lab demo` ---------
LINK_HELP = {
    "loss": "Loss: '5%', or Gilbert-Elliott (bursts) 'gemodel P [R [1-H [1-K]]]' as in netem.",
    "delay": "One-way delay, e.g. 20ms (RTT grows by twice it with --direction both).",
    "jitter": "Delay jitter, e.g. 5ms (reorders packets, as netem does).",
    "distribution": "Jitter distribution: uniform (default) or normal.",
    "delay_correlation": "Correlation of successive jitter draws, e.g. 25%.",
    "reorder": "Share sent at once while others wait, e.g. 10% (needs --delay).",
    "duplicate": "Duplication probability, e.g. 1%.",
    "corrupt": "Probability of one flipped bit in the IP payload, e.g. 0.1% "
               "(the kernel's checksum drops it).",
    "rate": "Rate limit, e.g. 10mbit (tc units: kbit, mbit, gbit; kbps/mbps are bytes/s), 1kbit to 1tbit.",
    "limit": "Packets the link holds (queue, tail drop), default 1000, at most 100000; as in netem, "
             "a delay alone holds TCP's 64 KB GSO batches whole, each one packet.",
    "limit_bytes": "Bytes the link holds per direction (tail drop), e.g. 8mb; default 32mb, at most 512mb.",
}
DEMO_HELP = {
    "loss": N_("What if the loss were... e.g. 30% (demo: 10%), or 'gemodel 1% 30%' for bursts."),
    "delay": N_("One-way delay, e.g. 50ms (demo: 20ms; 0ms for none)."),
    "jitter": N_("Delay jitter, e.g. 10ms (reorders packets)."),
    "distribution": N_("Jitter distribution: uniform (default) or normal."),
    "delay_correlation": N_("Correlation of successive jitter draws, e.g. 25%."),
    "reorder": N_("Share sent at once while others wait, e.g. 10%."),
    "duplicate": N_("Duplication probability, e.g. 5%."),
    "corrupt": N_("One flipped bit per packet with this probability, e.g. 1%."),
    "rate": N_("Link rate limit, e.g. 100kbit."),
    "limit": N_("Packets the link queue holds (with --rate)."),
    "limit_bytes": N_("Bytes the link queue holds per direction, e.g. 8mb (with --rate)."),
}


# --forward/--reverse: one direction's impairment in netem's words, over the options above
# (lab.link.params.parse_netem; docs/architecture.md#link-configuration).
FORWARD_HELP = N_("Client->server only, in netem's words, over the options above: e.g. 'delay 10ms loss 5%'.")
REVERSE_HELP = N_("Server->client only, in netem's words: e.g. 'delay 2ms'.")


def direction_words(forward: str | None, reverse: str | None) -> dict[str, dict[str, str]]:
    """--forward/--reverse as option mappings ({'forward': {'delay': '10ms'}}), only those given."""
    from lab.link.params import parse_netem

    given = {"forward": forward, "reverse": reverse}
    return {name: parse_netem(words, key=name) for name, words in given.items() if words is not None}


def impairment_options(helps: Mapping[str, str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Replace a command's `impairment` parameter with one `--KEY` option per impairment key.

    The keys are lab.link.models.OPTION_KEYS, the list scenario files and open_link take too, so no
    command can drift from them (docs/architecture.md#link-configuration); the command receives the
    options given as `impairment={key: value}`.
    """
    from lab.link.models import OPTION_KEYS  # stdlib only: costs the CLI nothing

    if set(helps) != set(OPTION_KEYS):
        raise ValueError(f"impairment help texts for exactly {OPTION_KEYS}, got {tuple(helps)}")

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.name != "impairment":
                parameters.append(parameter)
                continue
            parameters += [
                inspect.Parameter(key, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  default=typer.Option(None, help=helps[key]), annotation=str | None)
                for key in OPTION_KEYS
            ]

        @functools.wraps(command)
        def with_impairment(**kwargs: Any) -> Any:
            given = {key: kwargs.pop(key) for key in OPTION_KEYS}
            return command(**kwargs, impairment={k: v for k, v in given.items() if v is not None})

        with_impairment.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_impairment.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_impairment

    return decorate


@app.command()
@impairment_options(LINK_HELP)
def link(
    name: str = typer.Option("lab", help="Name prefix: namespaces NAME-client and NAME-server."),
    impairment: dict[str, str] = {},  # noqa: B006 - replaced by one option per key (impairment_options)
    direction: Direction = typer.Option(Direction.both, help="Which way impairment applies: "
                                        "forward = client->server."),
    forward: str | None = typer.Option(None, metavar="NETEM", help=FORWARD_HELP),
    reverse: str | None = typer.Option(None, metavar="NETEM", help=REVERSE_HELP),
    seed: int = typer.Option(1, help="Seed of the impairment models (same seed, same decisions)."),
    mtu: int = typer.Option(1500, min=576, max=65535, help="MTU of the link's devices."),
    capture: Path | None = typer.Option(None, help="Write every packet entering the link to "
                                        "this pcapng file, annotated with what the link did "
                                        "(open it in Wireshark)."),
    capture_limit: str | None = typer.Option(None, help="Stop capturing when the file reaches this "
                                             "size, e.g. 1gb (default 256mb)."),
) -> None:
    """Bring up an impaired link between two namespaces; stays up until Ctrl-C (needs root).

    NAME-client (198.18.0.1) and NAME-server (198.18.0.2) are joined by TUN devices and a
    forwarder process that applies the impairment to every IP packet (no sch_netem needed).
    Real kernel TCP and UDP run on both ends. Values use netem's words and units.

    \b
    Examples:
      lab link --loss 5%                          5 % loss each way
      lab link --delay 20ms --jitter 5ms          40 ms RTT, jittered
      lab link --loss 'gemodel 1% 30%'            loss in bursts (Gilbert-Elliott)
      lab link --forward 'delay 10ms loss 5%' --reverse 'delay 2ms'
                                                  an access link: each way its own
      lab link --rate 10mbit --limit 100 --capture link.pcapng

    \b
    Then run anything through it from another terminal:
      ip netns exec lab-server iperf3 -s
      ip netns exec lab-client iperf3 -u -c 198.18.0.2 -b 10M

    Ctrl-C (or SIGTERM) prints the link's counters and removes everything. After a
    `kill -9`, `lab cleanup` removes what is left.
    """
    from lab.link.models import LinkConfig
    from lab.link.session import link_command

    config = LinkConfig.from_options(impairment, direction=direction.value, seed=seed,  # parsed here, once
                                     **direction_words(forward, reverse))
    raise typer.Exit(link_command(name, config, mtu, capture, capture_limit))


@app.command(help=N_("List the protocols this install can measure, what each shows and needs."))
def protocols(lang: str | None = LANG) -> None:
    from lab.protocols import describe_protocols

    print(describe_protocols())


@app.command()
def cleanup() -> None:
    """Remove namespaces, TUN devices and forwarders left by a killed lab run (only the lab's)."""
    from lab.link.netns import cleanup_leftovers

    removed = cleanup_leftovers()
    for item in removed:
        typer.echo(f"removed {item}")
    typer.echo(f"{len(removed)} leftover(s) removed")


@app.command(help=N_(
    "Run a scenario: TCP and UDP over the same link, then result.json, report.html, report.md."
))
def run(
    scenario: Path = typer.Argument(..., help=N_("Scenario file (scenarios/*.toml).")),
    out: Path | None = typer.Option(None, help=N_("Output directory (default reports/NAME).")),
    seed: int | None = typer.Option(None, help=N_("Override the scenario's seed.")),
    capture: bool = typer.Option(False, help=N_("Also write DIR/link.pcapng.")),
    lang: str | None = LANG,
) -> None:
    from lab.runner import run_command

    raise typer.Exit(run_command(scenario, out, seed, capture))


@app.command(help=N_(
    "The classroom demo: TCP vs UDP over the same lossy, slow link, with a report (<1 min).\n\n"
    "Any impairment option answers \"what if...?\" on the spot, keeping the rest of the demo's link.\n\n"
    "\b\n"
    "Examples:\n"
    "  lab demo                          10 % loss and 20 ms delay each way\n"
    "  lab demo --loss 30% --delay 50ms  what if the link were much worse?\n"
    "  lab demo --loss 0% --jitter 5ms   no loss, but reordering: does TCP care?\n"
    "  lab demo --live                   watch every probe arrive (or not)\n"
    "  lab demo --lang pt                in Portuguese"
))
@impairment_options(DEMO_HELP)
def demo(
    out: Path = typer.Option(Path("reports/demo"), help=N_("Output directory.")),
    impairment: dict[str, str] = {},  # noqa: B006 - replaced by one option per key (impairment_options)
    direction: Direction | None = typer.Option(None, help=N_("Which way the impairment applies.")),
    forward: str | None = typer.Option(None, metavar="NETEM", help=FORWARD_HELP),
    reverse: str | None = typer.Option(None, metavar="NETEM", help=REVERSE_HELP),
    seed: int | None = typer.Option(None, help=N_("Seed of the link's decisions (demo: 1).")),
    live: bool = typer.Option(False, "--live", help=N_(
        "Draw every probe's fate as it happens: UDP's gaps and TCP's stalls appear on one shared RTT "
        "scale.")),
    capture: bool = typer.Option(False, "--capture", help=N_(
        "Also write OUT/link.pcapng (Wireshark; each packet's comment says what the link did; needs the "
        "real link).")),
    slides: bool = typer.Option(False, "--slides", help=N_(
        "Also write projector-sized figures (OUT/slides/).")),
    lang: str | None = LANG,
) -> None:
    from lab.runner import demo_command

    link = {**impairment, **({"direction": direction.value} if direction else {}),
            **direction_words(forward, reverse)}
    raise typer.Exit(demo_command(out, link, seed=seed, live=live, capture=capture, slides=slides))


@app.command()
def probe(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of case results."),
    case: list[str] | None = typer.Option(None, "--case", metavar="NAME",
                                          help="Run only this case (repeatable; --list shows them)."),
    layer: Layer | None = typer.Option(None, help="Run only cases of this layer."),
    target: str | None = typer.Option(
        None, metavar="HOST",
        help="Address the sandbox's servers own: a 198.18.0.0/15 address, or loopback (crafted "
             "packets then still go to 198.18.0.2 — a wire cannot carry 127/8 — and only the "
             "application cases use loopback). Anything else is refused.  [default: 198.18.0.2]"),
    list_cases: bool = typer.Option(False, "--list", help="List the catalogue and exit."),
) -> None:
    """Fire the malformed-packet catalogue at the lab's servers; show the kernel's verdicts."""
    from lab.probes.runner import probe_command

    raise typer.Exit(
        probe_command(as_json, case or [], layer.value if layer else None, target, list_cases)
    )


@app.command(help=N_("Re-render report.html and report.md from DIR/result.json."))
def report(
    directory: Path = typer.Argument(..., help=N_("A run directory holding result.json.")),
    slides: bool = typer.Option(False, "--slides", help=N_(
        "Also write each plot as a 16:9 PNG and SVG with large text, and one combined story figure "
        "(latency, arrivals, loss), in DIR/slides/.")),
    lang: str | None = LANG,
) -> None:
    from lab.report import render_command

    raise typer.Exit(render_command(directory, slides=slides))


def _choose_language(args: list[str]) -> None:
    """`--lang X` (anywhere on the line) or LANG=pt_*: the language of everything that follows."""
    from lab.i18n import set_language

    chosen = None
    for index, arg in enumerate(args):
        if arg == "--lang" and index + 1 < len(args):
            chosen = args[index + 1]
        elif arg.startswith("--lang="):
            chosen = arg.split("=", 1)[1]
    set_language(chosen)


def _translated(command: Any) -> Any:
    """The click command tree with every help text in the chosen language."""
    import typer.core

    from lab.i18n import _

    # typer's own words ("Options", "Arguments", "default: ...", "required") go through a module-level
    # gettext `_`: point it at the lab's catalogue, which carries them (lab.i18n.HELP_WORDS).
    if hasattr(typer.core, "_"):
        typer.core._ = _
    for cmd in [command, *getattr(command, "commands", {}).values()]:
        if cmd.help:
            cmd.help = _(cmd.help)
        for param in cmd.params:
            if getattr(param, "help", None):
                param.help = _(param.help)
    return command


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and exit status 2."""
    try:
        args = sys.argv[1:] if argv is None else list(argv)
        _choose_language(args)
        from lab.userns import maybe_enter  # no root: demo/run/link/probe in namespaces of their own

        outer = maybe_enter(args)
        if outer is not None:
            sys.exit(outer)
        # Without standalone mode, click *returns* the code of a `typer.Exit` instead of raising it.
        code = _translated(typer.main.get_command(app))(args=args, standalone_mode=False, prog_name="lab")
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # typer turns Ctrl-C into a silent Exit(130)
            print("lab: interrupted", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # bad option values, unknown commands, missing args
        print(f"lab: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("lab: interrupted", file=sys.stderr)
        sys.exit(130)
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
