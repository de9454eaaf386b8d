"""ClusterClient: a client of a running cluster, as one authenticated identity.

It sends programs and jobs to the coordinator, uploads its own inputs to each party, and
fetches from each party the outputs addressed to it: each party's fresh re-randomised
share of what is revealed to the caller, and what is revealed to a party it operates
(mpc.net.access). LocalCluster is this client plus the processes it starts itself.

    with mpc.ClusterClient.from_files("cluster.toml", certs="certs/", name="alice") as cluster:
        y = (cluster.share(x, owner=0) @ cluster.share(w, owner=1)).reveal()
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import threading
import time

import grpc
import torch

from mpc import ring
from mpc.api import MPCError, _Cluster
from mpc.net import framing, outputs, party_data, serde
from mpc.net import tls as tls_
from mpc.net.config import ClusterConfig
from mpc.net.mesh import client_channel
from mpc.net.proto import mpc_pb2 as pb
from mpc.net.proto import mpc_pb2_grpc as pb_grpc
from mpc.runtime.jobs import job_digest


class ClusterClient(_Cluster):
    def __init__(self, config: ClusterConfig | None, creds: tls_.Credentials | None, *,
                 job_timeout: float = 900.0, defer_truncation: bool = True, n_parties: int | None = None,
                 frac_bits: int | None = None):
        """`config`: the cluster file's contents (parties, coordinator); `creds`: this
        client's TLS material (None: plaintext, loopback only). Connect with `with` or connect()."""
        n = n_parties if n_parties is not None else config.n_parties
        super().__init__(n, frac_bits if frac_bits is not None else (config.frac_bits if config else
                                                                     ring.DEFAULT_FRAC_BITS), defer_truncation)
        self.config = config
        self._client_creds = creds
        self.job_timeout = job_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stubs: list[pb_grpc.PartyStub] = []
        self._channels: list[grpc.aio.Channel] = []
        self._coordinator: pb_grpc.CoordinatorStub | None = None
        self._loaded: set[str] = set()  # program digests the coordinator holds
        self.session = secrets.token_hex(16)  # with our identity, the namespace of our kept values at the parties
        self._last_submitted: asyncio.Future | None = None  # see _submit_and_run
        self.last_overhead: dict = {}

    @classmethod
    def from_files(cls, cluster_file: str, certs: str | None, name: str, **kwargs) -> "ClusterClient":
        """A client named `client-NAME` of the cluster in `cluster_file`, with its certificate
        and key from the directory `certs` (`mpc certs`); certs=None for plaintext on loopback."""
        config = ClusterConfig.load(cluster_file)  # relative paths from its directory; errors name the file
        creds = tls_.Credentials.load(certs, tls_.client_name(name)) if certs else None
        return cls(config, creds, **kwargs)

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def connect(self) -> None:
        if self.config.coordinator is None:
            raise MPCError("the cluster file names no [coordinator]: jobs are submitted through it")
        if self._client_creds is None:
            tls_.require_loopback({"coordinator": self.config.coordinator,
                                   **{f"party {p}": a for p, a in self.config.parties.items()}})
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True, name="mpc-client").start()

        async def connect():
            self._channels = [client_channel(self.config.parties[p], self._client_creds, tls_.party_name(p))
                              for p in range(self.n_parties)]
            self._stubs = [pb_grpc.PartyStub(ch) for ch in self._channels]
            channel = client_channel(self.config.coordinator, self._client_creds, tls_.COORDINATOR)
            self._channels.append(channel)
            self._coordinator = pb_grpc.CoordinatorStub(channel)

        self._call(connect())

    def close(self) -> None:
        if self._loop is None:
            return

        async def close():
            for ch in self._channels:
                await ch.close(grace=0.2)
        try:
            self._call(close(), timeout=5)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop = None

    def health(self) -> list[pb.HealthReply]:
        """Every party's Health reply (ready, and how many values it keeps, in how many bytes)."""
        async def ask():
            return await asyncio.gather(*(stub.Health(pb.HealthRequest(), timeout=10) for stub in self._stubs))

        return self._call(ask(), timeout=20)

    # -- jobs ----------------------------------------------------------------------------------------------

    def _call(self, coro, timeout: float | None = None):
        if self._loop is None:
            raise MPCError("the cluster is not running (use it inside `with`)")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _execute(self, program, job, inputs):
        return self._call(self._run_job(program, job, inputs), timeout=self.job_timeout + 10)

    def _execute_many(self, items, depth: int = 2, hold: bool = False):
        """Jobs in order with up to `depth` in flight: job k+1 is submitted while job k is
        online, so its offline phase (dealer material, PRG expansion), which the parties start
        at submission, overlaps job k's rounds; they start its online phase once job k has
        kept what it reads. `hold`: a job is run only when its outcome is asked for, so that
        the caller acts between jobs (a checkpoint of what job k kept, before job k+1 changes
        it); it is prepared meanwhile, and dropped at the parties if it is never asked for."""
        items = iter(items)
        flight: list = []  # (future of the outcomes, the gate of a held job or None)

        def launch():
            item = next(items, None)
            if item is None:
                return False
            program, job, inputs = item
            gate = self._loop.create_future() if hold else None
            flight.append((asyncio.run_coroutine_threadsafe(self._submit_and_run(program, job, inputs, gate),
                                                            self._loop), gate))
            return True

        def open_gate(gate, run: bool):
            self._loop.call_soon_threadsafe(lambda: gate.done() or gate.set_result(run))

        more = True
        try:
            while more or flight:
                while more and len(flight) < depth:
                    more = launch()
                if flight:
                    future, gate = flight.pop(0)
                    if gate is not None:
                        open_gate(gate, True)
                    yield future.result(self.job_timeout + 10)
        finally:
            for future, gate in flight:
                if gate is None:
                    future.cancel()
                    continue
                open_gate(gate, False)  # never run: dropped at the parties before anything else is sent
                try:
                    future.result(30)
                except Exception:
                    pass

    async def _cancel(self, job_id: str) -> None:
        """Drop a submitted job that will not be run at every party (its correlations too)."""
        await asyncio.gather(*(stub.Cancel(pb.JobRef(job_id=job_id), timeout=10) for stub in self._stubs),
                             return_exceptions=True)

    async def _submit_and_run(self, program, job, inputs, hold=None):
        # Every party must see the jobs submitted in order (a party lets a job read kept
        # values only after the jobs submitted before it keep theirs): wait for the previous
        # job's submissions to be acknowledged before sending ours.
        previous, mine = self._last_submitted, asyncio.get_running_loop().create_future()
        self._last_submitted = mine
        try:
            if previous is not None:
                await asyncio.shield(previous)
            return await self._run_job(program, job, inputs, submitted=mine, hold=hold)
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

    def _coordinator_error(self, exc: grpc.aio.AioRpcError) -> MPCError:
        detail = exc.details() or exc.code().name
        return MPCError(detail if detail.startswith(("party", "coordinator"))
                        else f"coordinator at {self.config.coordinator}: {detail}")

    async def _load(self, program) -> None:
        """Send `program` to the coordinator unless it has it; it sends it on to every party
        that lacks it (parties cache programs by digest)."""
        if program.digest in self._loaded:
            return
        try:
            reply = await self._coordinator.LoadProgram(serde.program_to_proto(program), timeout=self.job_timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._coordinator_error(exc) from None
        if reply.digest != program.digest:
            raise MPCError(f"the parties computed digest {reply.digest[:16]}… for program {program.digest[:16]}…")
        self._loaded.add(program.digest)

    def _checkpoint_call(self, method: str, p: int, *args):
        """Party p's checkpoint RPC (SaveCheckpoint, LoadCheckpoint, ListCheckpoints)."""
        async def call():
            try:
                if method == "ListCheckpoints":
                    reply = await self._stubs[p].ListCheckpoints(serde.checkpoint_query_to_proto(*args),
                                                                 timeout=self.job_timeout)
                    return serde.checkpoint_list_from_proto(reply)
                request = serde.checkpoint_request_to_proto(*args)
                request.client_session = self.session
                reply = await getattr(self._stubs[p], method)(request,
                                                              timeout=self.job_timeout)
                return reply.path
            except grpc.aio.AioRpcError as exc:
                raise self._party_error(p, exc) from None

        return self._call(call(), timeout=self.job_timeout + 10)

    def _describe_data(self, p, name, label, loss, n_classes):
        """Party p's shapes of its own file `name` (features, and targets if `label`)."""
        async def ask():
            try:
                return await self._stubs[p].DescribeData(pb.DataQuery(
                    source=party_data.source(name, label, "x", loss, n_classes)), timeout=self.job_timeout)
            except grpc.aio.AioRpcError as exc:
                raise self._party_error(p, exc) from None

        info = self._call(ask(), timeout=self.job_timeout + 10)
        return tuple(info.x_shape), tuple(info.y_shape)

    def _grant(self, grants: dict[int, int], grantee: str, program: str, revoke: bool = False) -> list[bool]:
        """Send grants (grant id -> handle of a value we keep) to every party, or revoke
        them; per party, whether each party held them (revoke) or took them."""
        async def send(p):
            oks = []
            for grant_id, handle in grants.items():
                try:
                    reply = await self._stubs[p].Grant(pb.GrantRequest(
                        grant=grant_id, handle=handle, client_session=self.session, grantee=grantee,
                        program=program, revoke=revoke), timeout=self.job_timeout)
                except grpc.aio.AioRpcError as exc:
                    raise self._party_error(p, exc) from None
                oks.append(reply.ok)
            return all(oks)

        async def send_all():
            return await _gather_or_raise([send(p) for p in range(self.n_parties)])

        return self._call(send_all(), timeout=self.job_timeout + 10)

    def _save_checkpoint(self, p, directory, step, job_hash, handles):
        return self._checkpoint_call("SaveCheckpoint", p, directory, step, job_hash, handles)

    def _load_checkpoint(self, p, directory, step, job_hash, handles):
        return self._checkpoint_call("LoadCheckpoint", p, directory, step, job_hash, handles)

    def _list_checkpoints(self, p, directory, job_hash):
        return self._checkpoint_call("ListCheckpoints", p, directory, job_hash)

    async def _run_job(self, program, job, inputs, submitted: asyncio.Future | None = None,
                       hold: asyncio.Future | None = None):
        overhead = {"program_s": 0.0, "submit_s": 0.0, "upload_s": 0.0, "results_s": 0.0, "assemble_s": 0.0,
                    "program_sent": False}

        async def upload(p):
            try:
                t1 = time.perf_counter()
                await self._upload(p, job.job_id, inputs[p])
                overhead["upload_s"] = max(overhead["upload_s"], time.perf_counter() - t1)
            except grpc.aio.AioRpcError as exc:
                raise self._party_error(p, exc) from None

        async def submit():
            """Uploads first (each party keeps them under our job id, our upload key), then the
            job to the coordinator, which answers with the fresh id the parties run it under."""
            t0 = time.perf_counter()
            if program.digest not in self._loaded:
                overhead["program_sent"] = True
                await self._load(program)
                overhead["program_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            await _gather_or_raise([upload(p) for p in range(self.n_parties) if inputs[p]])
            request = serde.job_to_proto(job)
            request.client_session = self.session
            try:
                try:
                    reply = await self._coordinator.Submit(request, timeout=self.job_timeout)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION or "load it first" not in (exc.details() or ""):
                        raise
                    # the coordinator dropped the program from its cache: send it again, once
                    self._loaded.discard(program.digest)
                    await self._load(program)
                    reply = await self._coordinator.Submit(request, timeout=self.job_timeout)
            except grpc.aio.AioRpcError as exc:
                raise self._coordinator_error(exc) from None
            overhead["submit_s"] = time.perf_counter() - t1
            return reply.job_id

        received = outputs.JobOutputs.for_job(program, job, self.n_parties)

        async def run(p):
            """Party p's outputs, each chunk summed into the job's buffers as it arrives."""
            assembling, t0 = 0.0, time.perf_counter()
            call = outputs.run_call(self._channels[p])(pb.JobRef(job_id=job_id, binding=binding),
                                                       timeout=self.job_timeout)
            try:
                async for msg in call:
                    t1 = time.perf_counter()
                    done = received.feed(p, msg)
                    assembling += time.perf_counter() - t1
                    if done:
                        # the caller's side, slowest party: the whole Run call, and reassembling outputs
                        overhead["results_s"] = max(overhead["results_s"], time.perf_counter() - t0)
                        overhead["assemble_s"] = max(overhead["assemble_s"], assembling)
                        return
            except grpc.aio.AioRpcError as exc:
                raise self._party_error(p, exc) from None
            except outputs.OutputError as exc:
                raise MPCError(str(exc)) from None
            finally:
                call.cancel()  # a stream refused half-way is not read further (no-op once it ended)
            raise MPCError(f"party {p} ended job {job_id} without a result")

        job_id = await submit()
        # Each party runs the job only if it holds what we submitted: our digest of it under the
        # coordinator's id, compared there with the job the coordinator forwarded.
        binding = job_digest(dataclasses.replace(job, job_id=job_id))
        if submitted is not None and not submitted.done():
            submitted.set_result(None)
        if hold is not None and not await hold:  # (the parties prepare it meanwhile)
            await self._cancel(job_id)
            return None
        self.last_overhead = overhead
        await _gather_or_raise([run(p) for p in range(self.n_parties)])
        return received.finish()


async def _upload_frames(job, inputs):
    """Each input's frames, framed straight from its tensor: the frame is the one copy
    (gRPC takes a message only as bytes; a memoryview it would copy into bytes first)."""
    for nid, value in inputs.items():
        raw = value if value.dtype == torch.int64 else value.to(torch.float64)  # a share, or the owner's plaintext
        data = raw.contiguous().numpy().reshape(-1)  # a view; 1-D, so that an empty one frames too
        for frame in framing.encode_frames(data, tag=pb.FRAME_INPUT, job=job, round=nid):
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
