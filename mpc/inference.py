"""Private inference on a cluster: a compiled model's weights from their owner, an input
from its owner, the prediction to one recipient.

The weights are shared once (`share_model`: a job with no outputs, whose inputs the
parties keep) and every later inference names them as kept values, so a second request
sends neither weights nor program: only the job and the input. Mixed into the clusters.

Who sees what: the model owner's party receives the weights in plaintext (it owns them),
the data owner's party the input; every other process sees shares. The prediction is
opened only to `recipient`: the caller by default (it sums the parties' shares), or a
party, in which case the caller receives nothing.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass, field

import torch

from mpc import ring
from mpc.compiler.variants import replicate, with_kept
from mpc.ir import TO_CALLER, Job, Node, Program
from mpc.prg import PRG, new_seed


@dataclass
class SharedModel:
    """A model whose weights the parties hold as shares (handles per parameter name)."""

    compiled: object
    owner: int
    handles: dict[str, int]
    programs: dict[int, Program] = field(default_factory=dict)  # batch size -> program using kept weights

    def program(self, batch: int = 1) -> Program:
        if batch not in self.programs:
            kept = with_kept(self.compiled.program, set(self.handles))
            self.programs[batch] = kept if batch == 1 else replicate(kept, batch, set(self.handles))
        return self.programs[batch]


@dataclass(frozen=True)
class ModelGrant:
    """What a model's owner hands the client it lets run inference (out of band, as JSON):
    the digest of the inference program, its batch size, and a grant id per weight. The
    grantee also needs the model's architecture (its own compiled copy, any weights) to
    compile the same program; the weights themselves never leave the parties."""

    program: str
    batch: int
    grants: dict[str, int]

    def to_json(self) -> str:
        return json.dumps({"program": self.program, "batch": self.batch, "grants": self.grants}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelGrant":
        d = json.loads(text)
        return cls(str(d["program"]), int(d["batch"]), {str(k): int(v) for k, v in d["grants"].items()})


CALLER = "caller"  # as model_owner or data_owner: the caller secret-shares the value itself


def caller_shares(value: torch.Tensor, n_parties: int, frac_bits: int) -> list[torch.Tensor]:
    """The caller's own additive sharing of `value`: n-1 uniform shares from a fresh AES-CTR
    stream and the difference; no party ever receives the plaintext."""
    first = ring.encode(value.detach(), frac_bits)  # a fresh tensor: party 0's share is made in it
    others = [PRG(new_seed()).ring(tuple(first.shape)) for _ in range(n_parties - 1)]
    for share in others:
        first -= share
    return [first, *others]


def _fingerprint(params: dict[str, torch.Tensor]) -> str:
    """Identifies the weights, so that new weights (same program) are shared anew."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].detach().to(torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


class InferenceMixin:
    def share_model(self, compiled, owner: int | str = 0) -> SharedModel:
        """Secret-share `compiled`'s weights from party `owner` (or, with owner="caller",
        shared by the caller itself: no party sees them); the parties keep the shares."""
        # The weights' fingerprint, computed once per params dict (load_state_dict makes a new
        # one), not hashed again on every inference.
        cached = getattr(compiled, "_params_fingerprint", None)
        if cached is None or cached[0] is not compiled.params:
            cached = (compiled.params, _fingerprint(compiled.params))
            compiled._params_fingerprint = cached
        key = (compiled.program.digest, owner, cached[1])
        shared = self._shared_models.get(key)
        if shared is not None:
            return shared
        if owner != CALLER and not (isinstance(owner, int) and 0 <= owner < self.n_parties):
            raise ValueError(f"model_owner must be a party id in 0..{self.n_parties - 1} or 'caller', got {owner!r}")
        params = [n for n in compiled.program.inputs if n.name in compiled.params]
        nodes = tuple(Node(k, "input", (), {"shape": n.shape, "kind": "private"}, n.shape, n.name, n.source)
                      for k, n in enumerate(params))
        program = Program(nodes, (), (), compiled.program.frac_bits)
        handles = {n.name: self._new_handle() for n in nodes}
        values = {}
        for node in nodes:
            value = compiled.params[node.name].detach().to(torch.float64)
            ring.check_encodable(value, program.frac_bits, what=f"parameter {node.name}")
            values[node.id] = value
        job = Job(uuid.uuid4().hex, program.digest, owners={n.id: TO_CALLER if owner == CALLER else owner
                                                            for n in nodes},
                  keep={n.id: handles[n.name] for n in nodes})
        if owner == CALLER:
            inputs = {p: {} for p in range(self.n_parties)}
            for nid, value in values.items():
                for p, share in enumerate(caller_shares(value, self.n_parties, program.frac_bits)):
                    inputs[p][nid] = share
        else:
            inputs = {p: (values if p == owner else {}) for p in range(self.n_parties)}
        if nodes:
            self._execute(program, job, inputs)
        shared = self._shared_models[key] = SharedModel(compiled, owner, handles)
        return shared

    def grant_inference(self, model: SharedModel, to: str, batch: int = 1,
                        input_shape: tuple[int, ...] | None = None) -> ModelGrant:
        """Let the client `to` (its certificate's name, e.g. "client-bob") run this model's
        inference program at `batch` on the weights we keep, and nothing else
        (mpc.net.grants); its outputs go to that client. Hand it the returned ModelGrant.
        A model trained at the parties (TrainResult.shared) also needs `input_shape`, one
        request's shape; the grantee compiles it with compile_model(..., trainable=True)."""
        if hasattr(model.compiled, "shared_for"):
            if input_shape is None:
                raise ValueError("a model trained at the parties needs input_shape (the shape of one request)")
            model = model.compiled.shared_for(tuple(input_shape), model.handles)
        program = model.program(batch)
        ids = {name: secrets.randbits(62) | 1 for name in model.handles}
        self._grant({ids[name]: h for name, h in model.handles.items()}, to, program.digest)
        return ModelGrant(program.digest, batch, ids)

    def revoke_inference(self, model: SharedModel, grant: ModelGrant) -> bool:
        """Withdraw a grant at every party; whether every party held it."""
        return all(self._grant({grant.grants[name]: h for name, h in model.handles.items() if name in grant.grants},
                               "", grant.program, revoke=True))

    def _grant(self, grants: dict[int, int], grantee: str, program: str, revoke: bool = False) -> list[bool]:
        raise NotImplementedError("grants are made at the parties of a networked cluster (LocalCluster, "
                                  "RemoteCluster): an in-memory cluster has one client")

    def infer(self, model, x: torch.Tensor, *, model_owner: int = 0, data_owner: int = 1,
              recipient: int | None = None, grant: ModelGrant | None = None) -> torch.Tensor | None:
        """The model's output on the data owner's input `x`, to the caller (default) or to
        party `recipient` (then the caller gets None). `model` is a compiled model (its
        weights are shared from `model_owner` on first use) or a SharedModel; with `grant`,
        a compiled model of the same architecture run on the weights another client keeps
        and granted us (grant_inference)."""
        return self.infer_batch(model, [x], model_owner=model_owner, data_owner=data_owner, recipient=recipient,
                                grant=grant)[0]

    def infer_batch(self, model, xs: list[torch.Tensor], *, model_owner: int = 0, data_owner: int = 1,
                    recipient: int | None = None, grant: ModelGrant | None = None) -> list[torch.Tensor | None]:
        """Several requests of the same model as one job: their rounds are shared."""
        if not xs:
            return []
        if grant is not None:
            if isinstance(model, SharedModel):
                raise ValueError("with a grant, pass the compiled model (the weights are the granting client's)")
            if len(xs) != grant.batch:
                raise ValueError(f"the grant is for batches of {grant.batch}, not {len(xs)}")
            model = SharedModel(model, -1, dict(grant.grants))  # grant ids stand where handles would
            if model.program(grant.batch).digest != grant.program:
                raise ValueError(f"the grant is for program {grant.program[:16]}…; this model compiles to "
                                 f"{model.program(grant.batch).digest[:16]}… (another architecture or input shape)")
        shared = model if isinstance(model, SharedModel) else None
        if shared is not None and hasattr(shared.compiled, "shared_for"):  # trained at the parties
            shared = shared.compiled.shared_for(tuple(xs[0].shape), shared.handles)
        compiled = shared.compiled if shared else model
        xs = [compiled.check_input(x) for x in xs]
        if data_owner != CALLER and not (isinstance(data_owner, int) and 0 <= data_owner < self.n_parties):
            raise ValueError(f"data_owner must be a party id in 0..{self.n_parties - 1} or 'caller', got {data_owner!r}")
        to = TO_CALLER if recipient is None else int(recipient)
        if not (to == TO_CALLER or 0 <= to < self.n_parties):
            raise ValueError(f"recipient must be None (the caller) or a party id, got {recipient}")
        frac_bits = compiled.program.frac_bits  # the program's, which may differ from the cluster's default
        for x in xs:
            ring.check_encodable(x, frac_bits, what=f"input owned by party {data_owner}")
        if shared is None:
            shared = self.share_model(compiled, model_owner)
        program = shared.program(len(xs))
        private = [n for n in program.inputs if n.attrs["kind"] == "private"]
        kept = {n.id: shared.handles[n.name] for n in program.inputs if n.attrs["kind"] == "kept"}
        owner_id = TO_CALLER if data_owner == CALLER else data_owner
        job = Job(uuid.uuid4().hex, program.digest, owners={n.id: owner_id for n in private},
                  kept={} if grant else kept, recipients=tuple(to for _ in program.outputs),
                  granted=kept if grant else {})
        inputs = {p: {} for p in range(self.n_parties)}
        for n, x in zip(private, xs):
            if data_owner == CALLER:
                for p, share in enumerate(caller_shares(x, self.n_parties, frac_bits)):
                    inputs[p][n.id] = share
            else:
                inputs[data_owner][n.id] = x.detach().to(torch.float64)
        outcomes = self._execute(program, job, inputs)
        self.last_program, self.last_job = program, job
        self.last_stats = [o.stats for o in outcomes]
        values = []
        for nid, scale in zip(program.outputs, program.output_scales):
            if to == TO_CALLER:
                values.append(outcomes.value(nid, program.frac_bits * scale))
            else:
                values.append(None)
        per = len(values) // len(xs)  # outputs per request: a model with several heads gives a tuple
        if per == 1:
            return values
        return [None if to != TO_CALLER else tuple(values[k * per:(k + 1) * per]) for k in range(len(xs))]
