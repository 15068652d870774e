"""The malformed-packet atlas: what the kernel does with bad packets, and proof the server survives.

`catalogue` (declarative cases), `builders` (scapy), `sandbox` + `execute` (a child process in a
private network namespace with a TUN device and the lab's echo servers), `verdict` (pure: from
observations to a verdict), `runner` (`lab probe`, `run_atlas`), `targets` (refusal before building).

Observed on Linux 6.x (6.18), and where a first guess is wrong (each is a case; `lab probe --list`
shows the reason next to it):
- ip-ttl-zero is delivered: TTL is only checked when forwarding (RFC 1812 §5.3.1), not ICMP 11/0;
- ip-total-length-smaller is not an IP error: IP trims the packet to its total length (legal:
  link padding), then UDP finds its length field larger than what is left (UdpInErrors);
- udp-closed-port-bad-checksum gets no ICMP port unreachable: the checksum is verified first;
- udp-bad-checksum counts in UdpInCsumErrors *and* UdpInErrors;
- ip-source-is-own-address and ip-source-loopback (martians) move no SNMP counter at all: the
  proof they arrived is the TUN's rx counter, and the verdict says so;
- ip-frag-duplicate reassembles: exact duplicates are ignored, only true overlaps drop the whole
  datagram (since the FragmentSmack fix, Linux >= 4.19; older kernels trimmed and reassembled);
- ip-frag-missing-last answers ICMP 11/1 only because fragment 0 arrived (RFC 792), else it is
  just IpReasmTimeout — both are accepted;
- SYN+FIN, null and Xmas segments to a listening port are silently discarded, RST if closed; SYN+FIN
  could be answered with a SYN-ACK by other stacks (both accepted);
- a SYN on an established connection counts in TcpInErrs and is answered by a challenge ACK
  (RFC 5961 §4); a RST far outside the window is dropped without one (RFC 5961 §3.2);
- the 256-SYN flood is answered by 256 SYN-ACKs: past the backlog SYN cookies take over
  (TcpExtTCPReqQFullDoCookies), so no SYN is dropped and the real client connects at once.

While reviewing, the atlas itself gave wrong verdicts once: "silently ignored" cases came out as
"never reached the stack" under load, because the TCP teardown of the previous liveness check
landed in the next case's counter window (IpInReceives -1). Liveness checks now close in order
and "arrived" is read from the TUN's own rx counter.
"""
