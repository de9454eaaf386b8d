"""A party's checkpoint RPCs: a client's shares of its kept values written to, read from and
listed in the party's own directory, inside its data directory when it has one, under
names bound to the client that wrote them."""

from __future__ import annotations

import asyncio
import hashlib
import os

import grpc

from mpc.net import serde
from mpc.net.access import AccessDenied, kept_handle
from mpc.net.proto import mpc_pb2 as pb
from mpc.runtime.jobs import JobError


class CheckpointService:
    """PartyServer's checkpoint methods (it provides pid, access, data_dir, session,
    _ready_or_abort and _allowed)."""

    async def save_checkpoint(self, request: pb.CheckpointRequest, context) -> pb.CheckpointReply:
        """Write this party's shares of the named kept values to its own checkpoint directory."""
        await self._ready_or_abort(context)
        who = await self._allowed(context, self.access.client, "a checkpoint")
        try:
            directory, step, job_hash, handles = serde.checkpoint_request_from_proto(request)
            if not handles:
                raise JobError("a checkpoint names at least one kept value")
            directory = self._checkpoint_dir(who, directory)
            handles = {name: kept_handle(namespace(who, request.client_session), h) for name, h in handles.items()}
            path = await asyncio.to_thread(self.session.save_checkpoint, directory, step, _owned(who, job_hash),
                                           handles)
        except AccessDenied as exc:
            await context.abort(exc.code, str(exc))
        except (serde.SerdeError, JobError, OSError, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"party {self.pid}: checkpoint not written: {exc}")
        return pb.CheckpointReply(path=path)

    async def load_checkpoint(self, request: pb.CheckpointRequest, context) -> pb.CheckpointReply:
        await self._ready_or_abort(context)
        who = await self._allowed(context, self.access.client, "a checkpoint")
        try:
            directory, step, job_hash, handles = serde.checkpoint_request_from_proto(request)
            directory = self._checkpoint_dir(who, directory)
            handles = {name: kept_handle(namespace(who, request.client_session), h) for name, h in handles.items()}
            path = await asyncio.to_thread(self.session.load_checkpoint, directory, step, _owned(who, job_hash), handles)
        except AccessDenied as exc:
            await context.abort(exc.code, str(exc))
        except (serde.SerdeError, JobError) as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc) if str(exc).startswith("party")
                                else f"party {self.pid}: {exc}")
        return pb.CheckpointReply(path=path)

    async def list_checkpoints(self, request: pb.CheckpointQuery, context) -> pb.CheckpointList:
        await self._ready_or_abort(context)
        who = await self._allowed(context, self.access.client, "a checkpoint query")
        try:
            directory, job_hash = serde.checkpoint_query_from_proto(request)
            directory = self._checkpoint_dir(who, directory)
        except AccessDenied as exc:
            await context.abort(exc.code, str(exc))
        except serde.SerdeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"party {self.pid}: {exc}")
        steps, refused = await asyncio.to_thread(self.session.list_checkpoints, directory, _owned(who, job_hash))
        return serde.checkpoint_list_to_proto(steps, refused)

    def _checkpoint_dir(self, who: str, directory: str) -> str:
        """Where this party writes a client's checkpoint. With a data directory, inside it:
        a relative name goes under <data>/checkpoints/<client>/, an absolute path must lie
        within <data>. Without one (a LocalCluster on one machine), only the party's
        operator checkpoints, anywhere this process may write."""
        if not self.access.secure:
            return directory
        if self.data_dir is None:
            self.access.reads_files_for(who, "a checkpoint")
            return directory
        root = os.path.realpath(self.data_dir)
        if not os.path.isabs(directory):
            root = os.path.join(root, "checkpoints", who)
        path = os.path.realpath(os.path.join(root, directory))
        if os.path.commonpath([path, root]) != root:
            raise AccessDenied(grpc.StatusCode.PERMISSION_DENIED, f"party {self.pid}: checkpoint directory "
                               f"{directory!r} is outside its data directory")
        return path


def namespace(identity: str, session: str) -> str:
    """Kept values belong to one client process: its certified identity and its own random
    session id (two processes with one certificate must not share handles)."""
    return f"{identity}/{session[:64]}"


def _owned(identity: str, job_hash: str) -> str:
    """The job hash a checkpoint file records: bound to the client that wrote it, so that
    another client can neither load it nor have it counted (or pruned) as its own."""
    return hashlib.sha256(f"{identity}\x00{job_hash}".encode()).hexdigest()
