"""TCP without root: the lab in user namespaces of its own (lab/userns.py), as an ordinary user.

The suite runs as root in CI, so these tests become an unprivileged user (`student` if it exists,
else `nobody`) with setpriv, and run the lab as that user from the repository, with this
interpreter's site-packages on PYTHONPATH. Everything such a run creates lives in its own PID
namespace; the tests check no process of the user outlives it.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import lab
from lab import userns

REPO = Path(lab.__file__).resolve().parent.parent
UP_TIMEOUT_S = 20.0

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or userns.inside() or shutil.which("setpriv") is None,
    reason="becomes an unprivileged user: needs real root and setpriv (util-linux)")

SCENARIO = """\
[scenario]
name = "userns"
[traffic]
count = {count}
size = 64
rate = 200
timeout = 2.5  # TCP backoff under a loaded CI machine stays below it
[link]
loss = "10%"
delay = "5ms"
"""


@dataclass
class User:
    uid: int
    gid: int
    python: str
    home: Path  # a directory of the user's, removed afterwards

    def env(self, **extra: str) -> dict[str, str]:
        paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "PYTHONPATH": os.pathsep.join([str(REPO), *sorted(paths)]), "LANG": "C.UTF-8",
               "COLUMNS": "100", "MPLCONFIGDIR": str(self.home / "mpl")}
        env.update(extra)
        return env

    def argv(self, *args: str) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", *args]

    def run(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env=self.env(**env), cwd=self.home, text=True,
                              capture_output=True, timeout=timeout)

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), env=self.env(**env), cwd=self.home, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def lab(self, *args: str) -> list[str]:
        return [self.python, "-m", "lab", *args]

    def processes(self) -> list[str]:
        """The user's live processes started from `home` (zombies excluded): what a run may leave.

        By working directory, which every process of a run inherits: another xdist worker's runs
        (another home) are not ours.
        """
        done = subprocess.run(["ps", "-u", str(self.uid), "-o", "pid=,stat=,args="], capture_output=True,
                              text=True, check=False)
        mine = []
        for line in done.stdout.splitlines():
            pid, stat, *args = line.split(None, 2)
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue  # gone meanwhile
            if not stat.startswith("Z") and (cwd == str(self.home) or cwd.startswith(f"{self.home}/")):
                mine.append(" ".join([pid, *args]))
        return mine


def _pick_user() -> tuple[int, int] | None:
    for name in ("student", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    return None


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    ids = _pick_user()
    if ids is None:
        pytest.skip("no unprivileged user (student or nobody) on this machine")
    home = Path(tempfile.mkdtemp(prefix="wirelab-userns-"))
    try:
        os.chown(home, *ids)
        for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
            candidate = User(ids[0], ids[1], python, home)
            # The lab re-executes its interpreter (forwarder, servers): the user must be able to, too.
            probe = (f"import subprocess, sys; assert sys.version_info[:2] == {tuple(sys.version_info[:2])}; "
                     "subprocess.run([sys.executable, '-c', 'import lab.cli'], check=True)")
            try:
                if candidate.run(python, "-c", probe, timeout=30).returncode == 0:
                    break
            except (OSError, subprocess.SubprocessError):
                continue
        else:
            pytest.skip("no interpreter the unprivileged user can run with the lab importable")
        yield candidate
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def able(user: User) -> User:
    """The user, where user namespaces (and /dev/net/tun) are open to them; else skip with the reason."""
    code = "from lab.userns import can_use_userns as c; print(c() or '')"
    reason = user.run(user.python, "-c", code, timeout=30).stdout.strip()
    if reason:
        pytest.skip(f"user namespaces unavailable to an unprivileged user here: {reason}")
    return user


def _scenario(user: User, count: int) -> Path:
    path = user.home / f"userns-{count}.toml"
    path.write_text(SCENARIO.format(count=count))
    return path


def _read_until(process: subprocess.Popen[str], marker: str) -> str:
    fd = process.stdout.fileno()
    text = ""
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline and marker not in text:
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            text += chunk.decode()
    return text


def _settle(user: User) -> list[str]:
    """The user's processes once the run's namespaces had a moment to go (bounded)."""
    deadline = time.monotonic() + 5.0
    left = user.processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = user.processes()
    return left


# --- the checks, no user switch needed -----------------------------------------------------------
@pytest.mark.parametrize(("name", "value", "said"), [
    ("kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone = 0"),
    ("user/max_user_namespaces", "0", "user.max_user_namespaces = 0"),
    ("kernel/apparmor_restrict_unprivileged_userns", "1", "kernel.apparmor_restrict_unprivileged_userns = 1"),
])
def test_the_reason_names_the_setting_that_disables_user_namespaces(
        tmp_path: Path, name: str, value: str, said: str) -> None:
    (tmp_path / name).parent.mkdir(parents=True)
    (tmp_path / name).write_text(f"{value}\n")
    reason = userns.can_use_userns(tmp_path)
    assert reason is not None and said in reason, reason


# --- as an unprivileged user -----------------------------------------------------------------------
def test_run_as_a_user_measures_tcp_and_udp_on_the_real_link(able: User) -> None:
    """`lab run` without root: link mode, both protocols, TCP retransmits, files owned by the user."""
    out = able.home / "run"
    done = able.run(*able.lab("run", str(_scenario(able, 100)), "--out", str(out)), timeout=60)
    assert done.returncode in (0, 1), done.stderr
    result = json.loads((out / "result.json").read_text())
    point = result["points"][0]
    assert point["mode"] == "link" and not point["skipped"], point["skipped"]
    by_proto = {r["protocol"]: r for r in point["results"]}
    assert set(by_proto) == {"tcp", "udp"}
    assert by_proto["tcp"]["received"] == 100
    assert by_proto["tcp"]["observations"]["tcp"]["tcp_info"]["total_retrans"] > 0
    assert 0 < by_proto["udp"]["lost"] < 100
    assert {p.stat().st_uid for p in out.iterdir()} == {able.uid}
    assert _settle(able) == []


def test_link_as_a_user_comes_up_is_enterable_and_goes_down_on_sigterm(able: User) -> None:
    process = able.popen(*able.lab("link", "--name", "uns", "--loss", "1%"))
    try:
        text = _read_until(process, "press Ctrl-C")
        assert "link uns is up" in text, text
        listing = able.run("nsenter", f"--target={process.pid}", "--user", "--mount",
                           "--preserve-credentials", "ls", "/run/netns", timeout=10)
        assert listing.stdout.split() == ["uns-client", "uns-server"], listing.stderr
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=UP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert "nsenter --target" in err, err  # told how to reach the link from outside
    assert "link uns removed" in out, (out, err)
    assert process.returncode in (0, 143), (process.returncode, err)
    assert _settle(able) == []


def test_kill_9_of_a_user_run_leaves_nothing_behind(able: User) -> None:
    """The forwarder dies with the run's PID namespace: no `lab cleanup` needed (nor possible)."""
    process = able.popen(*able.lab("link", "--name", "uns9"))
    try:
        text = _read_until(process, "press Ctrl-C")
        assert "link uns9 is up" in text, text
        assert any("lab.link.forwarder" in p for p in able.processes())
        process.kill()
        process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert _settle(able) == []


def test_ctrl_c_of_a_user_run_keeps_what_it_measured(able: User) -> None:
    """SIGINT to the PID the user started reaches the lab inside, which writes what it measured."""
    out = able.home / "interrupted"
    process = able.popen(*able.lab("run", str(_scenario(able, 2000)), "--out", str(out)))
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while time.monotonic() < deadline and not any("lab.link.forwarder" in p for p in able.processes()):
            time.sleep(0.1)
        time.sleep(1.5)  # the link is up: TCP is measuring
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    result = json.loads((out / "result.json").read_text())
    assert result["interrupted"] is True
    assert result["points"][0]["mode"] == "link"
    assert _settle(able) == []


def test_without_user_namespaces_the_fallback_says_which_setting(able: User) -> None:
    """Userns disabled (a crafted sysctl dir): UDP over the relay, TCP skipped naming the sysctl."""
    sysctls = able.home / "sys"
    (sysctls / "user").mkdir(parents=True, exist_ok=True)
    (sysctls / "user" / "max_user_namespaces").write_text("0\n")
    os.chmod(sysctls, 0o755)
    out = able.home / "fallback"
    env = {userns.SYSCTL_DIR_ENV: str(sysctls)}
    done = able.run(*able.lab("run", str(_scenario(able, 60)), "--out", str(out)), **env)
    assert done.returncode in (0, 1), done.stderr
    point = json.loads((out / "result.json").read_text())["points"][0]
    assert point["mode"] == "relay"
    assert "user.max_user_namespaces = 0" in point["skipped"]["tcp"]
    refused = able.run(*able.lab("link"), timeout=30, **env)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("lab: error: ")
    assert "user.max_user_namespaces = 0" in refused.stderr


def test_python_m_lab_userns_runs_privileged_tests_as_a_user(able: User) -> None:
    """`python -m lab.userns -- pytest` (what `make test` does): a privileged test runs, not skipped."""
    test = able.home / "test_inside.py"
    test.write_text(
        "import os\nimport pytest\n\n"
        "@pytest.mark.privileged\n"
        "def test_link(impaired_link):\n"
        "    link = impaired_link(loss='0%')\n"
        "    assert os.getuid() == 0\n"
        "    assert link.config is not None\n")
    done = able.run(able.python, "-m", "lab.userns", "--", able.python, "-m", "pytest", "-q",
                    "-p", "no:cacheprovider", "-p", "no:xdist", str(test), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout, done.stdout
    status = able.run(able.python, "-m", "lab.userns", "--", "sh", "-c", "exit 7", timeout=30)
    assert status.returncode == 7
