"""LocalCluster: a dealer and N party processes on loopback, and the client that drives them.

Start-up: the dealer and each party bind port 0 and print `LISTENING <port>`; the
launcher then hands every party the cluster config on stdin and waits for `READY`. A
process that fails or stays silent past `connect_timeout` is named in the error, with the
tail of its stderr. On exit (or on error, or when the launching process dies) every
process is stopped: SIGTERM, then SIGKILL after a grace period.

TLS by default: start() makes a throwaway CA (its key stays in memory) and a certificate
per process in a private temporary directory, so the processes talk mutual TLS on
loopback as they would between hosts. `tls=False` runs them in plaintext, loopback only.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import torch

from mpc import ring
from mpc.api import MPCError, _Cluster
from mpc.net import framing, serde
from mpc.net import tls as tls_
from mpc.net.config import ClusterConfig
from mpc.net.mesh import client_channel
from mpc.net.proto import mpc_pb2 as pb
from mpc.net.proto import mpc_pb2_grpc as pb_grpc


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


# Serve buffers up to 32 MiB from the heap and keep freed memory: a 16 MiB round buffer
# then reuses pages instead of faulting in fresh ones (about 20 ms a round per party at
# 10^6 elements). A deployment should set the same variable for its processes.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


class LocalCluster(_Cluster):
    """A dealer and `n_parties` party processes on 127.0.0.1, talking gRPC.

    Use as a context manager; `addresses` lists where each process serves."""

    def __init__(self, n_parties: int = 3, frac_bits: int = ring.DEFAULT_FRAC_BITS, *,
                 connect_timeout: float = 30.0, round_timeout: float = 120.0, job_timeout: float = 900.0,
                 torch_threads: int = 1, verbose: bool = False, defer_truncation: bool = True,
                 tls: bool = True):
        super().__init__(n_parties, frac_bits, defer_truncation)
        self.tls = tls
        self.ca: tls_.CertificateAuthority | None = None  # signs this cluster's certificates (TLS only)
        self.certs_dir: tempfile.TemporaryDirectory | None = None  # removed when the cluster is collected
        self._client_creds: tls_.Credentials | None = None
        self.connect_timeout = connect_timeout
        self.round_timeout = round_timeout
        self.job_timeout = job_timeout
        self.torch_threads = torch_threads
        self.verbose = verbose
        self.processes: list[_Process] = []
        self.config: ClusterConfig | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stubs: list[pb_grpc.PartyStub] = []
        self._channels: list[grpc.aio.Channel] = []
        self._loaded: list[set[str]] = [set() for _ in range(n_parties)]  # program digests each party holds
        self._last_submitted: asyncio.Future | None = None  # see _submit_and_run
        self.last_overhead: dict = {}

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
                self.ca = tls_.CertificateAuthority.create("mpc LocalCluster CA")
                self.certs_dir = tempfile.TemporaryDirectory(prefix="mpc-certs-")
                self.ca.write(self.certs_dir.name, with_key=False)
                for identity in [tls_.DEALER] + [tls_.party_name(p) for p in range(self.n_parties)]:
                    tls_.write_credentials(self.certs_dir.name, self.ca.issue(identity))
                self._client_creds = self.ca.issue(tls_.client_name("local"))
                # a client of `mpc launch` in another process uses the same identity
                tls_.write_credentials(self.certs_dir.name, self._client_creds)
                security = ["--certs", self.certs_dir.name]
            dealer = self._spawn("dealer", "parties.dealer", "--listen", "127.0.0.1:0",
                                 "--n-parties", str(self.n_parties), *security)
            parties = [self._spawn(f"party {p}", "parties.party", "--pid", str(p), "--listen", "127.0.0.1:0",
                                   "--config", "-", *security) for p in range(self.n_parties)]
            dealer_port = dealer.expect("LISTENING", deadline)
            ports = [proc.expect("LISTENING", deadline) for proc in parties]
            self.config = ClusterConfig(self.n_parties, f"127.0.0.1:{dealer_port}",
                                        {p: f"127.0.0.1:{port}" for p, port in enumerate(ports)}, self.frac_bits,
                                        self.connect_timeout, self.round_timeout)
            text = self.config.to_toml()
            for proc in parties:
                proc.proc.stdin.write(text)
                proc.proc.stdin.close()
            for proc in parties:
                proc.expect("READY", deadline)
            self._start_client()
        except BaseException:
            self.stop()
            raise

    def _start_client(self) -> None:
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True, name="mpc-client").start()

        async def connect():
            self._channels = [client_channel(self.config.parties[p], self._client_creds, tls_.party_name(p))
                              for p in range(self.n_parties)]
            self._stubs = [pb_grpc.PartyStub(ch) for ch in self._channels]

        self._call(connect())

    def stop(self, grace: float = 5.0) -> None:
        """Stop every process (SIGTERM, then SIGKILL after `grace` seconds)."""
        if self._loop is not None:
            async def close():
                for ch in self._channels:
                    await ch.close(grace=0.2)
            try:
                self._call(close(), timeout=5)
            except Exception:
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
        for proc in self.processes:
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            proc.stop(grace)
        self.processes = []

    @property
    def addresses(self) -> dict[str, str]:
        if self.config is None:
            return {}
        return {"dealer": self.config.dealer, **{f"party {p}": a for p, a in self.config.parties.items()}}

    def health(self) -> list[pb.HealthReply]:
        """Every party's Health reply (ready, and how many values it keeps, in how many bytes)."""
        async def ask():
            return await asyncio.gather(*(stub.Health(pb.HealthRequest(), timeout=10) for stub in self._stubs))

        return self._call(ask(), timeout=20)

    # -- jobs ----------------------------------------------------------------------------------------------

    def _call(self, coro, timeout: float | None = None):
        if self._loop is None:
            raise MPCError("the cluster is not running (use it inside `with LocalCluster(...)`)")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _execute(self, program, job, inputs):
        return self._call(self._run_job(program, job, inputs), timeout=self.job_timeout + 10)

    def _execute_many(self, items, depth: int = 2):
        """Jobs in order with up to `depth` in flight: job k+1 is submitted while job k is
        online, so its offline phase (dealer material, PRG expansion) overlaps job k's rounds;
        the parties start its online phase once job k has kept what it reads."""
        items = iter(items)
        flight: list = []

        def launch():
            item = next(items, None)
            if item is None:
                return False
            program, job, inputs = item
            flight.append(asyncio.run_coroutine_threadsafe(self._submit_and_run(program, job, inputs), self._loop))
            return True

        more = True
        try:
            while more or flight:
                while more and len(flight) < depth:
                    more = launch()
                if flight:
                    yield flight.pop(0).result(self.job_timeout + 10)
        finally:
            for future in flight:
                future.cancel()

    async def _submit_and_run(self, program, job, inputs):
        # Every party must see the jobs submitted in order (a party lets a job read kept
        # values only after the jobs submitted before it keep theirs): wait for the previous
        # job's submissions to be acknowledged before sending ours.
        previous, mine = self._last_submitted, asyncio.get_running_loop().create_future()
        self._last_submitted = mine
        try:
            if previous is not None:
                await asyncio.shield(previous)
            return await self._run_job(program, job, inputs, submitted=mine)
        finally:
            if not mine.done():
                mine.set_result(None)

    async def _upload(self, p, job, inputs):
        call = self._channels[p].stream_unary("/mpc.net.proto.Party/Upload", request_serializer=None,
                                              response_deserializer=pb.ExchangeReply.FromString)
        await call(_upload_frames(job, inputs), timeout=self.job_timeout)

    def _party_error(self, p: int, exc: grpc.aio.AioRpcError) -> MPCError:
        detail = exc.details() or exc.code().name
        return MPCError(detail if detail.startswith(f"party {p}") else f"party {p} at {self.config.parties[p]}: {detail}")

    async def _load(self, p: int, program) -> None:
        """Send `program` to party p unless it has it (parties cache programs by digest)."""
        if program.digest in self._loaded[p]:
            return
        reply = await self._stubs[p].LoadProgram(serde.program_to_proto(program), timeout=self.job_timeout)
        if reply.digest != program.digest:
            raise MPCError(f"party {p} computed digest {reply.digest[:16]}… for program {program.digest[:16]}…")
        self._loaded[p].add(program.digest)

    def _checkpoint_call(self, method: str, p: int, *args):
        """Party p's checkpoint RPC (SaveCheckpoint, LoadCheckpoint, ListCheckpoints)."""
        async def call():
            try:
                if method == "ListCheckpoints":
                    reply = await self._stubs[p].ListCheckpoints(serde.checkpoint_query_to_proto(*args),
                                                                 timeout=self.job_timeout)
                    return serde.checkpoint_list_from_proto(reply)
                reply = await getattr(self._stubs[p], method)(serde.checkpoint_request_to_proto(*args),
                                                              timeout=self.job_timeout)
                return reply.path
            except grpc.aio.AioRpcError as exc:
                raise self._party_error(p, exc) from None

        return self._call(call(), timeout=self.job_timeout + 10)

    def _save_checkpoint(self, p, directory, step, job_hash, handles):
        return self._checkpoint_call("SaveCheckpoint", p, directory, step, job_hash, handles)

    def _load_checkpoint(self, p, directory, step, job_hash, handles):
        return self._checkpoint_call("LoadCheckpoint", p, directory, step, job_hash, handles)

    def _list_checkpoints(self, p, directory, job_hash):
        return self._checkpoint_call("ListCheckpoints", p, directory, job_hash)

    async def _run_job(self, program, job, inputs, submitted: asyncio.Future | None = None):
        overhead = {"program_s": 0.0, "submit_s": 0.0, "upload_s": 0.0, "results_s": 0.0, "assemble_s": 0.0,
                    "program_sent": False}

        async def submit(p):
            try:
                t0 = time.perf_counter()
                if program.digest not in self._loaded[p]:
                    overhead["program_sent"] = True
                    await self._load(p, program)
                    overhead["program_s"] = max(overhead["program_s"], time.perf_counter() - t0)
                t1 = time.perf_counter()
                if inputs[p]:
                    await self._upload(p, job.job_id, inputs[p])
                    overhead["upload_s"] = max(overhead["upload_s"], time.perf_counter() - t1)
                try:
                    await self._stubs[p].Submit(serde.job_to_proto(job), timeout=self.job_timeout)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                        raise
                    # the party dropped the program from its cache: send it again, once
                    self._loaded[p].discard(program.digest)
                    await self._load(p, program)
                    if inputs[p]:
                        await self._upload(p, job.job_id, inputs[p])
                    await self._stubs[p].Submit(serde.job_to_proto(job), timeout=self.job_timeout)
                overhead["submit_s"] = max(overhead["submit_s"], time.perf_counter() - t1)
            except grpc.aio.AioRpcError as exc:
                raise self._party_error(p, exc) from None

        async def run(p):
            assembly, assembling, t0 = serde.OutcomeAssembly(), 0.0, time.perf_counter()
            try:
                async for event in self._stubs[p].Run(pb.JobRef(job_id=job.job_id), timeout=self.job_timeout):
                    kind = event.WhichOneof("event")
                    if kind == "error":
                        raise MPCError(event.error)
                    t1 = time.perf_counter()
                    if kind == "output":
                        assembly.add_chunk(event.output)
                        assembling += time.perf_counter() - t1
                    elif kind == "stats":
                        outcome = assembly.finish(event.stats, self.n_parties)
                        # the caller's side, slowest party: the whole Run call, and reassembling outputs
                        overhead["results_s"] = max(overhead["results_s"], time.perf_counter() - t0)
                        overhead["assemble_s"] = max(overhead["assemble_s"], assembling + time.perf_counter() - t1)
                        return outcome
            except grpc.aio.AioRpcError as exc:
                raise self._party_error(p, exc) from None
            raise MPCError(f"party {p} ended job {job.job_id} without a result")

        await _gather_or_raise([submit(p) for p in range(self.n_parties)])
        if submitted is not None and not submitted.done():
            submitted.set_result(None)
        self.last_overhead = overhead
        return await _gather_or_raise([run(p) for p in range(self.n_parties)])


async def _upload_frames(job, inputs):
    for nid, value in inputs.items():
        raw = value if value.dtype == torch.int64 else value.to(torch.float64)  # a share, or the owner's plaintext
        for frame in framing.encode_frames(raw.contiguous().numpy(), tag=pb.FRAME_INPUT,
                                           job=job, round=nid):
            yield frame


async def _gather_or_raise(coros):
    """Run all; if any fail, raise one MPCError listing every failure."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        messages = sorted({str(e) for e in errors})
        # a peer failure shows at several parties; name the root cause first
        raise MPCError("; ".join(messages))
    return results
