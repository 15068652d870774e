"""The malformed-packet atlas: what the kernel does with bad packets, and proof the server survives.

`catalogue` (declarative cases), `builders` (scapy), `sandbox` + `execute` (a child process in a
private network namespace with a TUN device and the lab's echo servers), `verdict` (pure: from
observations to a verdict), `runner` (`lab probe`, `run_atlas`), `targets` (refusal before building).

Observed on Linux 6.x, and worth knowing (each is a case with a note):
- a TTL 0 packet is delivered: TTL is only checked when forwarding;
- a UDP checksum is verified when the application reads, not on arrival;
- overlapping fragments drop the whole datagram (since the FragmentSmack fix);
- SYN+FIN, null and Xmas segments to a listening port are silently discarded (RST if closed);
- a SYN on an established connection counts in TcpInErrs and is answered by a challenge ACK.
"""
