"""LocalCluster: a dealer, N party processes and a coordinator on loopback, and the client
that drives them.

Start-up: the dealer, each party and the coordinator bind port 0 and print `LISTENING
<port>`; the launcher then hands the parties and the coordinator the cluster config on
stdin and waits for `READY`. The client submits programs and jobs to the coordinator,
uploads its inputs to each party and fetches the outputs addressed to it from each party
(mpc.net.access says who may do what). A
process that fails or stays silent past `connect_timeout` is named in the error, with the
tail of its stderr. On exit (or on error, or when the launching process dies) every
process is stopped: SIGTERM, then SIGKILL after a grace period.

TLS by default: start() makes a throwaway CA (its key stays in memory) and a certificate
per process in a private temporary directory, so the processes talk mutual TLS on
loopback as they would between hosts. `tls=False` runs them in plaintext, loopback only.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

from mpc import ring
from mpc.api import MPCError
from mpc.client import ClusterClient
from mpc.net import tls as tls_
from mpc.net.config import ClusterConfig
from parties._process import MALLOC_TUNABLES  # what `mpc party` etc. set too


class ClusterStartError(MPCError):
    """A process of a local cluster failed to start or to connect."""


class _Process:
    def __init__(self, name: str, argv: list[str], env: dict):
        self.name = name
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     env=env, text=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def expect(self, prefix: str, deadline: float) -> str:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClusterStartError(f"{self.name} did not print {prefix} in time{self.stderr_tail()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=5)
                raise ClusterStartError(f"{self.name} exited with status {self.proc.returncode} "
                                        f"before {prefix}{self.stderr_tail()}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def stderr_tail(self, n: int = 1500) -> str:
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace").strip()
        return f"\n--- {self.name} stderr ---\n{text[-n:]}" if text else ""

    def stop(self, grace: float) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        self.stderr.close()




class LocalCluster(ClusterClient):
    """A dealer, `n_parties` party processes and a coordinator on 127.0.0.1, talking gRPC,
    and a client of them named client-local (the operator of every party).

    Use as a context manager; `addresses` lists where each process serves. `clients` names
    more clients the cluster accepts (client-NAME); `client(name)` connects as one of them.
    `state_dir` keeps the cluster's CA and certificates there instead of throwing them away:
    a cluster started again on it has the same keys, and so the same long-lived randomness
    of reproducible jobs (a resumed training repeats the interrupted one bit for bit)."""

    def __init__(self, n_parties: int = 3, frac_bits: int = ring.DEFAULT_FRAC_BITS, *,
                 connect_timeout: float = 30.0, round_timeout: float = 120.0, job_timeout: float = 900.0,
                 torch_threads: int = 1, verbose: bool = False, defer_truncation: bool = True,
                 tls: bool = True, clients: tuple[str, ...] = (), link_delay_s: float | None = None,
                 state_dir: str | None = None):
        super().__init__(None, None, job_timeout=job_timeout, defer_truncation=defer_truncation,
                         n_parties=n_parties, frac_bits=frac_bits)
        self.tls = tls
        self.ca: tls_.CertificateAuthority | None = None  # signs this cluster's certificates (TLS only)
        self.certs_dir: tempfile.TemporaryDirectory | None = None  # removed when the cluster is collected
        self.state_dir = state_dir
        self.connect_timeout = connect_timeout
        self.round_timeout = round_timeout
        self.torch_threads = torch_threads
        self.verbose = verbose
        self.client_names = ("local", *clients)
        self.processes: list[_Process] = []
        # With a delay, every connection to a party (from its peers and from clients) goes
        # through a proxy that delivers each chunk that much later: a WAN on loopback.
        self.link_delay_s = link_delay_s
        self._proxies = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def _spawn(self, name: str, module: str, *args: str) -> _Process:
        env = dict(os.environ, MPC_TORCH_THREADS=str(self.torch_threads), MPC_PARENT_PID=str(os.getpid()),
                   PYTHONUNBUFFERED="1")
        env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
        argv = [sys.executable, "-m", module, *args] + (["--verbose"] if self.verbose else [])
        proc = _Process(name, argv, env)
        self.processes.append(proc)
        return proc

    def start(self) -> None:
        try:
            deadline = time.monotonic() + self.connect_timeout + 30  # + interpreter and torch start-up
            security = ["--insecure"]
            if self.tls:
                security = ["--certs", self._make_certs()]
            dealer = self._spawn("dealer", "parties.dealer", "--listen", "127.0.0.1:0",
                                 "--n-parties", str(self.n_parties), *security,
                                 "--clients", ",".join(tls_.client_name(c) for c in self.client_names))
            parties = [self._spawn(f"party {p}", "parties.party", "--pid", str(p), "--listen", "127.0.0.1:0",
                                   "--config", "-", *security) for p in range(self.n_parties)]
            coordinator = self._spawn("coordinator", "parties.coordinator", "--listen", "127.0.0.1:0",
                                      "--config", "-", *security)
            dealer_port = dealer.expect("LISTENING", deadline)
            ports = [proc.expect("LISTENING", deadline) for proc in parties]
            coordinator_port = coordinator.expect("LISTENING", deadline)
            local = tls_.client_name("local")  # this client, the operator of every party
            if self.link_delay_s is not None:
                from mpc.net.delay_proxy import ProxyThread

                self._proxies = ProxyThread()
                ports = [self._proxies.add("127.0.0.1", ("127.0.0.1", int(port)), delay=self.link_delay_s)
                         for port in ports]
            self.config = ClusterConfig(self.n_parties, f"127.0.0.1:{dealer_port}",
                                        {p: f"127.0.0.1:{port}" for p, port in enumerate(ports)}, self.frac_bits,
                                        self.connect_timeout, self.round_timeout,
                                        coordinator=f"127.0.0.1:{coordinator_port}",
                                        clients=tuple(tls_.client_name(c) for c in self.client_names),
                                        operators={p: local for p in range(self.n_parties)})
            text = self.config.to_toml()
            for proc in parties + [coordinator]:
                proc.proc.stdin.write(text)
                proc.proc.stdin.close()
            for proc in parties + [coordinator]:
                proc.expect("READY", deadline)
            self.connect()
        except BaseException:
            self.stop()
            raise

    def _make_certs(self) -> str:
        """The directory of this cluster's certificates (tls.make_cluster_certs, client-local
        included: a client of `mpc launch` in another process uses it): throwaway ones, or
        those of state_dir (made there on the first start, with the CA's key, readable by
        their owner only)."""
        local = tls_.client_name("local")
        if self.state_dir:
            directory = os.path.join(self.state_dir, "certs")
            names = [tls_.DEALER, tls_.COORDINATOR, local, "ca"] + [tls_.party_name(p) for p in range(self.n_parties)]
            if all(os.path.exists(os.path.join(directory, f"{name}.key")) for name in names):
                self.ca = tls_.CertificateAuthority.load(directory)
            else:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                self.ca = tls_.make_cluster_certs(directory, self.n_parties, ca_key=True)
        else:
            self.certs_dir = tempfile.TemporaryDirectory(prefix="mpc-certs-")
            directory = self.certs_dir.name
            self.ca = tls_.make_cluster_certs(directory, self.n_parties, ca_key=False)
        self._client_creds = tls_.Credentials.load(directory, local)
        return directory

    def client(self, name: str) -> ClusterClient:
        """Another client of this cluster, as client-NAME (listed in `clients`); connect it
        with `with`. With TLS its jobs, outputs and kept values are its own (mpc.net.access);
        without (tls=False, one trusted machine) nobody is authenticated, and only kept
        values stay apart (each client process has its own namespace)."""
        if name not in self.client_names:
            raise MPCError(f"client-{name} is not a client of this cluster (clients: {', '.join(self.client_names)})")
        creds = self.ca.issue(tls_.client_name(name)) if self.ca else None
        return ClusterClient(self.config, creds, job_timeout=self.job_timeout, defer_truncation=self.defer_truncation)

    def set_link_delay(self, seconds: float) -> None:
        """Change the delay every message to a party gets (a cluster started with link_delay_s)."""
        if self._proxies is None:
            raise MPCError("this cluster was started without delaying proxies (give link_delay_s)")
        self._proxies.set_delay(seconds)

    def stop(self, grace: float = 5.0) -> None:
        """Stop every process (SIGTERM, then SIGKILL after `grace` seconds)."""
        self.close()
        for proc in self.processes:
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            proc.stop(grace)
        self.processes = []
        if self._proxies is not None:  # after the processes: a proxy closing first would look like a lost peer
            self._proxies.close()
            self._proxies = None

    @property
    def addresses(self) -> dict[str, str]:
        if self.config is None:
            return {}
        return {"dealer": self.config.dealer, **{f"party {p}": a for p, a in self.config.parties.items()},
                "coordinator": self.config.coordinator}
