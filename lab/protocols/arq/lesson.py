"""Lesson — reliability over a lossy channel / Lição — confiabilidade sobre um canal com perdas.

EN: Watch stop-and-wait, go-back-N or selective repeat carry a few messages across a simulated
channel that loses, duplicates and reorders datagrams. Nothing touches the network and no time
passes: a virtual clock jumps from event to event, and the seeded random generator makes every run
with the same options print the same story. Compare the counters of the three schemes at 20 % loss.

PT: Veja o pare-e-espere, o go-back-N ou a repetição seletiva levar algumas mensagens por um canal
simulado que perde, duplica e reordena datagramas. Nada toca a rede e o tempo não passa de verdade:
um relógio virtual salta de evento em evento, e o gerador aleatório com semente faz toda execução
com as mesmas opções contar a mesma história. Compare os contadores dos três esquemas com 20 % de
perda.

    python -m lab.protocols.arq --scheme gbn --loss 20% --count 8 --window 4 [--seed 1] [--lang pt]
"""

from __future__ import annotations

import argparse
import sys

from lab.lessons.common import pick_language
from lab.protocols.arq.endpoint import SHORT_NAMES, machines
from lab.protocols.arq.simulation import Channel, random_fates, simulate

MESSAGES = {
    "en": {
        "description": "Simulate an ARQ scheme over a lossy channel and print what happens.",
        "scheme": "sw (stop-and-wait), gbn (go-back-N) or sr (selective repeat)",
        "loss": "share of datagrams lost, each way, e.g. 20%% (default 20%%)",
        "duplicate": "share of datagrams duplicated, e.g. 5%% (default 0%%)",
        "delay": "one-way delay in ms (default 10)",
        "jitter": "extra random delay up to this many ms; it reorders (default 0)",
        "count": "messages to send (default 8)",
        "window": "segments in flight (default 4; stop-and-wait: always 1)",
        "seed": "seed of the channel's random generator (default 1)",
        "lang": "language of the messages: en or pt (default: from LANG)",
        "bad_share": "{what} must be a percentage from 0%% to 90%%, got {value!r}",
        "header": "{scheme}, window {window}, {count} messages, loss {loss} each way, seed {seed}",
        "events": {"send": "send", "resend": "resend", "lost": "  lost", "deliver": "deliver",
                   "ack": "ack", "acked": "acked", "dup-ack": "dup ack", "timeout": "TIMEOUT"},
        "result": "delivered {delivered} of {count} messages in order, after {time:.3f} s",
        "sender": "sender:   {sent} sent, {retransmitted} retransmitted, {timeouts} timeouts, "
                  "{duplicate_acks} duplicate acks, {window_stalls} window stalls",
        "receiver": "receiver: {delivered} delivered, {duplicates} duplicates, {out_of_order} out of order, "
                    "{acks_sent} acks sent",
        "timer": "timer:    RTO {rto:.3f} s, SRTT {srtt}, {samples} RTT samples "
                 "(Karn: none from resent segments)",
    },
    "pt": {
        "description": "Simula um esquema ARQ sobre um canal com perdas e mostra o que acontece.",
        "scheme": "sw (pare-e-espere), gbn (go-back-N) ou sr (repetição seletiva)",
        "loss": "fração de datagramas perdidos, em cada sentido, p.ex. 20%% (padrão 20%%)",
        "duplicate": "fração de datagramas duplicados, p.ex. 5%% (padrão 0%%)",
        "delay": "atraso de ida em ms (padrão 10)",
        "jitter": "atraso aleatório extra de até tantos ms; reordena (padrão 0)",
        "count": "mensagens a enviar (padrão 8)",
        "window": "segmentos em trânsito (padrão 4; pare-e-espere: sempre 1)",
        "seed": "semente do gerador aleatório do canal (padrão 1)",
        "lang": "idioma das mensagens: en ou pt (padrão: conforme LANG)",
        "bad_share": "{what} deve ser uma porcentagem de 0%% a 90%%, não {value!r}",
        "header": "{scheme}, janela {window}, {count} mensagens, perda {loss} em cada sentido, "
                  "semente {seed}",
        "events": {"send": "envia", "resend": "reenvia", "lost": "  perdido", "deliver": "entrega",
                   "ack": "ack", "acked": "confirmado", "dup-ack": "ack duplicado", "timeout": "TIMEOUT"},
        "result": "entregou {delivered} de {count} mensagens em ordem, após {time:.3f} s",
        "sender": "emissor:  {sent} enviados, {retransmitted} retransmitidos, {timeouts} timeouts, "
                  "{duplicate_acks} acks duplicados, {window_stalls} janelas cheias",
        "receiver": "receptor: {delivered} entregues, {duplicates} duplicados, {out_of_order} fora de ordem, "
                    "{acks_sent} acks enviados",
        "timer": "timer:    RTO {rto:.3f} s, SRTT {srtt}, {samples} amostras de RTT "
                 "(Karn: nenhuma de reenvios)",
    },
}
SCHEME_NAMES = {"sw": "stop-and-wait", "gbn": "go-back-N", "sr": "selective repeat"}
MAX_COUNT = 1000  # a lesson prints every event: keep it readable


def share(text: str) -> float:
    """EN: '20%' or '0.2' -> 0.2. PT: '20%' ou '0.2' -> 0.2."""
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= value <= 0.9:  # EN: a channel losing everything never delivers  PT: nunca entregaria
        raise ValueError(text)
    return value


def main(argv: list[str]) -> int:
    """EN: parse the options, simulate, print the timeline and the counters. PT: idem, em português."""
    text = MESSAGES.get(pick_language(argv), MESSAGES["en"])
    parser = argparse.ArgumentParser(prog="python -m lab.protocols.arq", description=text["description"],
                                     allow_abbrev=False)
    parser.add_argument("--scheme", choices=list(SHORT_NAMES), default="sw", help=text["scheme"])
    parser.add_argument("--loss", default="20%", help=text["loss"])
    parser.add_argument("--duplicate", default="0%", help=text["duplicate"])
    parser.add_argument("--delay", type=float, default=10.0, help=text["delay"])
    parser.add_argument("--jitter", type=float, default=0.0, help=text["jitter"])
    parser.add_argument("--count", type=int, default=8, choices=range(1, MAX_COUNT + 1), metavar="N",
                        help=text["count"])
    parser.add_argument("--window", type=int, default=4, choices=range(1, 65), metavar="W",
                        help=text["window"])
    parser.add_argument("--seed", type=int, default=1, help=text["seed"])
    parser.add_argument("--lang", choices=["en", "pt"], help=text["lang"])
    args = parser.parse_args(argv)
    shares = {}
    for what in ("loss", "duplicate"):
        try:
            shares[what] = share(getattr(args, what))
        except ValueError:
            parser.error(text["bad_share"].format(what=what, value=getattr(args, what)).replace("%%", "%"))
    if not (0 <= args.delay <= 10_000 and 0 <= args.jitter <= 10_000):
        parser.error("--delay/--jitter: 0..10000 ms")

    def channel(seed: int) -> Channel:
        # EN: each direction draws from its own generator, as the lab's link does.
        # PT: cada sentido sorteia do seu próprio gerador, como o enlace do lab.
        return Channel(random_fates(seed, loss=shares["loss"], duplicate=shares["duplicate"],
                                    delay=args.delay / 1000, jitter=args.jitter / 1000))

    sender, receiver = machines(SHORT_NAMES[args.scheme], conn=1, window=args.window)
    names = text["events"]
    print(text["header"].format(scheme=SCHEME_NAMES[args.scheme], window=sender.window, count=args.count,
                                loss=args.loss, seed=args.seed))

    def log(now: float, event: str, detail: str) -> None:
        print(f"{now:9.3f} s  {names[event]:<14} {detail}")

    messages = [f"message {i}".encode() for i in range(args.count)]
    outcome = simulate(sender, receiver, messages, forward=channel(args.seed), reverse=channel(args.seed + 1),
                       log=log)
    print(text["result"].format(delivered=len(outcome.delivered), count=args.count, time=outcome.ended))
    print(text["sender"].format(**sender.counters.to_dict()))
    print(text["receiver"].format(**receiver.counters.to_dict()))
    timer = sender.timer
    srtt = "-" if timer.srtt is None else f"{timer.srtt:.3f} s"
    print(text["timer"].format(rto=timer.rto, srtt=srtt, samples=timer.samples))
    return 0 if outcome.delivered == messages else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
