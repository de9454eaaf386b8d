from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameTag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_UNSPECIFIED: _ClassVar[FrameTag]
    FRAME_HELLO: _ClassVar[FrameTag]
    FRAME_OPEN: _ClassVar[FrameTag]
    FRAME_INPUT: _ClassVar[FrameTag]
    FRAME_ABORT: _ClassVar[FrameTag]
    FRAME_OUTPUT: _ClassVar[FrameTag]
    FRAME_EVENT: _ClassVar[FrameTag]
FRAME_UNSPECIFIED: FrameTag
FRAME_HELLO: FrameTag
FRAME_OPEN: FrameTag
FRAME_INPUT: FrameTag
FRAME_ABORT: FrameTag
FRAME_OUTPUT: FrameTag
FRAME_EVENT: FrameTag

class TensorProto(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class IntList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class Attr(_message.Message):
    __slots__ = ("i", "f", "s", "ints", "tensor", "b")
    I_FIELD_NUMBER: _ClassVar[int]
    F_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    INTS_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    i: int
    f: float
    s: str
    ints: IntList
    tensor: TensorProto
    b: bool
    def __init__(self, i: _Optional[int] = ..., f: _Optional[float] = ..., s: _Optional[str] = ..., ints: _Optional[_Union[IntList, _Mapping]] = ..., tensor: _Optional[_Union[TensorProto, _Mapping]] = ..., b: _Optional[bool] = ...) -> None: ...

class NodeProto(_message.Message):
    __slots__ = ("id", "op", "inputs", "attrs", "shape", "name", "source", "extra_shapes")
    class AttrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Attr
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Attr, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_SHAPES_FIELD_NUMBER: _ClassVar[int]
    id: int
    op: str
    inputs: _containers.RepeatedScalarFieldContainer[int]
    attrs: _containers.MessageMap[str, Attr]
    shape: _containers.RepeatedScalarFieldContainer[int]
    name: str
    source: str
    extra_shapes: _containers.RepeatedCompositeFieldContainer[IntList]
    def __init__(self, id: _Optional[int] = ..., op: _Optional[str] = ..., inputs: _Optional[_Iterable[int]] = ..., attrs: _Optional[_Mapping[str, Attr]] = ..., shape: _Optional[_Iterable[int]] = ..., name: _Optional[str] = ..., source: _Optional[str] = ..., extra_shapes: _Optional[_Iterable[_Union[IntList, _Mapping]]] = ...) -> None: ...

class ProgramProto(_message.Message):
    __slots__ = ("nodes", "outputs", "output_scales", "frac_bits")
    NODES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCALES_FIELD_NUMBER: _ClassVar[int]
    FRAC_BITS_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeProto]
    outputs: _containers.RepeatedScalarFieldContainer[int]
    output_scales: _containers.RepeatedScalarFieldContainer[int]
    frac_bits: int
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeProto, _Mapping]]] = ..., outputs: _Optional[_Iterable[int]] = ..., output_scales: _Optional[_Iterable[int]] = ..., frac_bits: _Optional[int] = ...) -> None: ...

class ProgramReply(_message.Message):
    __slots__ = ("digest", "n_correlations", "rounds")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    N_CORRELATIONS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    digest: str
    n_correlations: int
    rounds: int
    def __init__(self, digest: _Optional[str] = ..., n_correlations: _Optional[int] = ..., rounds: _Optional[int] = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ("job_id", "program", "owners", "kept", "recipients", "keep", "free", "inputs", "public", "profile", "replay", "submitter", "upload_key", "client_session", "sources", "reproducible", "granted")
    class OwnersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class KeptEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class KeepEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: TensorProto
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[TensorProto, _Mapping]] = ...) -> None: ...
    class PublicEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: TensorProto
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[TensorProto, _Mapping]] = ...) -> None: ...
    class SourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    class GrantedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_KEY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SESSION_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    REPRODUCIBLE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    program: str
    owners: _containers.ScalarMap[int, int]
    kept: _containers.ScalarMap[int, int]
    recipients: _containers.RepeatedScalarFieldContainer[int]
    keep: _containers.ScalarMap[int, int]
    free: _containers.RepeatedScalarFieldContainer[int]
    inputs: _containers.MessageMap[int, TensorProto]
    public: _containers.MessageMap[int, TensorProto]
    profile: bool
    replay: _containers.RepeatedScalarFieldContainer[int]
    submitter: str
    upload_key: str
    client_session: str
    sources: _containers.ScalarMap[int, str]
    reproducible: bool
    granted: _containers.ScalarMap[int, int]
    def __init__(self, job_id: _Optional[str] = ..., program: _Optional[str] = ..., owners: _Optional[_Mapping[int, int]] = ..., kept: _Optional[_Mapping[int, int]] = ..., recipients: _Optional[_Iterable[int]] = ..., keep: _Optional[_Mapping[int, int]] = ..., free: _Optional[_Iterable[int]] = ..., inputs: _Optional[_Mapping[int, TensorProto]] = ..., public: _Optional[_Mapping[int, TensorProto]] = ..., profile: _Optional[bool] = ..., replay: _Optional[_Iterable[int]] = ..., submitter: _Optional[str] = ..., upload_key: _Optional[str] = ..., client_session: _Optional[str] = ..., sources: _Optional[_Mapping[int, str]] = ..., reproducible: _Optional[bool] = ..., granted: _Optional[_Mapping[int, int]] = ...) -> None: ...

class GrantRequest(_message.Message):
    __slots__ = ("grant", "handle", "client_session", "grantee", "program", "revoke")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SESSION_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    REVOKE_FIELD_NUMBER: _ClassVar[int]
    grant: int
    handle: int
    client_session: str
    grantee: str
    program: str
    revoke: bool
    def __init__(self, grant: _Optional[int] = ..., handle: _Optional[int] = ..., client_session: _Optional[str] = ..., grantee: _Optional[str] = ..., program: _Optional[str] = ..., revoke: _Optional[bool] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("n_correlations", "rounds", "job_id")
    N_CORRELATIONS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    n_correlations: int
    rounds: int
    job_id: str
    def __init__(self, n_correlations: _Optional[int] = ..., rounds: _Optional[int] = ..., job_id: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id", "binding")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    binding: str
    def __init__(self, job_id: _Optional[str] = ..., binding: _Optional[str] = ...) -> None: ...

class JobStatsProto(_message.Message):
    __slots__ = ("offline_s", "online_s", "rounds", "bytes_sent", "messages_sent", "dealer_bytes", "n_correlations", "phases", "round_bytes", "ready_ahead_s", "offline_wait_s")
    class PhasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    OFFLINE_S_FIELD_NUMBER: _ClassVar[int]
    ONLINE_S_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_SENT_FIELD_NUMBER: _ClassVar[int]
    DEALER_BYTES_FIELD_NUMBER: _ClassVar[int]
    N_CORRELATIONS_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    ROUND_BYTES_FIELD_NUMBER: _ClassVar[int]
    READY_AHEAD_S_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    offline_s: float
    online_s: float
    rounds: int
    bytes_sent: int
    messages_sent: int
    dealer_bytes: int
    n_correlations: int
    phases: _containers.ScalarMap[str, float]
    round_bytes: _containers.RepeatedScalarFieldContainer[int]
    ready_ahead_s: float
    offline_wait_s: float
    def __init__(self, offline_s: _Optional[float] = ..., online_s: _Optional[float] = ..., rounds: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., messages_sent: _Optional[int] = ..., dealer_bytes: _Optional[int] = ..., n_correlations: _Optional[int] = ..., phases: _Optional[_Mapping[str, float]] = ..., round_bytes: _Optional[_Iterable[int]] = ..., ready_ahead_s: _Optional[float] = ..., offline_wait_s: _Optional[float] = ...) -> None: ...

class OutputInfo(_message.Message):
    __slots__ = ("node", "plaintext", "dtype", "shape", "total_bytes")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    node: int
    plaintext: bool
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    total_bytes: int
    def __init__(self, node: _Optional[int] = ..., plaintext: _Optional[bool] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("output", "stats", "error")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    output: OutputInfo
    stats: JobStatsProto
    error: str
    def __init__(self, output: _Optional[_Union[OutputInfo, _Mapping]] = ..., stats: _Optional[_Union[JobStatsProto, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class DataQuery(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: str
    def __init__(self, source: _Optional[str] = ...) -> None: ...

class DataInfo(_message.Message):
    __slots__ = ("x_shape", "y_shape")
    X_SHAPE_FIELD_NUMBER: _ClassVar[int]
    Y_SHAPE_FIELD_NUMBER: _ClassVar[int]
    x_shape: _containers.RepeatedScalarFieldContainer[int]
    y_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, x_shape: _Optional[_Iterable[int]] = ..., y_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("pid", "n_parties", "ready", "detail", "kept_values", "kept_bytes", "jobs", "version", "uptime_s", "sessions")
    PID_FIELD_NUMBER: _ClassVar[int]
    N_PARTIES_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    KEPT_VALUES_FIELD_NUMBER: _ClassVar[int]
    KEPT_BYTES_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    n_parties: int
    ready: bool
    detail: str
    kept_values: int
    kept_bytes: int
    jobs: int
    version: str
    uptime_s: float
    sessions: int
    def __init__(self, pid: _Optional[int] = ..., n_parties: _Optional[int] = ..., ready: _Optional[bool] = ..., detail: _Optional[str] = ..., kept_values: _Optional[int] = ..., kept_bytes: _Optional[int] = ..., jobs: _Optional[int] = ..., version: _Optional[str] = ..., uptime_s: _Optional[float] = ..., sessions: _Optional[int] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("directory", "step", "job_hash", "handles", "client_session")
    class HandlesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    JOB_HASH_FIELD_NUMBER: _ClassVar[int]
    HANDLES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SESSION_FIELD_NUMBER: _ClassVar[int]
    directory: str
    step: int
    job_hash: str
    handles: _containers.ScalarMap[str, int]
    client_session: str
    def __init__(self, directory: _Optional[str] = ..., step: _Optional[int] = ..., job_hash: _Optional[str] = ..., handles: _Optional[_Mapping[str, int]] = ..., client_session: _Optional[str] = ...) -> None: ...

class CheckpointReply(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class CheckpointQuery(_message.Message):
    __slots__ = ("directory", "job_hash")
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    JOB_HASH_FIELD_NUMBER: _ClassVar[int]
    directory: str
    job_hash: str
    def __init__(self, directory: _Optional[str] = ..., job_hash: _Optional[str] = ...) -> None: ...

class CheckpointList(_message.Message):
    __slots__ = ("steps", "refused")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedScalarFieldContainer[int]
    refused: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, steps: _Optional[_Iterable[int]] = ..., refused: _Optional[_Iterable[str]] = ...) -> None: ...

class FrameHeader(_message.Message):
    __slots__ = ("tag", "job", "round", "sender", "chunk", "n_chunks", "total_bytes")
    TAG_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    N_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    tag: FrameTag
    job: str
    round: int
    sender: int
    chunk: int
    n_chunks: int
    total_bytes: int
    def __init__(self, tag: _Optional[_Union[FrameTag, str]] = ..., job: _Optional[str] = ..., round: _Optional[int] = ..., sender: _Optional[int] = ..., chunk: _Optional[int] = ..., n_chunks: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class ExchangeReply(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: str
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class DealerHello(_message.Message):
    __slots__ = ("pid", "n_parties")
    PID_FIELD_NUMBER: _ClassVar[int]
    N_PARTIES_FIELD_NUMBER: _ClassVar[int]
    pid: int
    n_parties: int
    def __init__(self, pid: _Optional[int] = ..., n_parties: _Optional[int] = ...) -> None: ...

class DealerSeed(_message.Message):
    __slots__ = ("seed", "epoch", "commitments", "repro_seed", "repro_pairs", "repro_commitment")
    SEED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    COMMITMENTS_FIELD_NUMBER: _ClassVar[int]
    REPRO_SEED_FIELD_NUMBER: _ClassVar[int]
    REPRO_PAIRS_FIELD_NUMBER: _ClassVar[int]
    REPRO_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    seed: bytes
    epoch: bytes
    commitments: _containers.RepeatedScalarFieldContainer[bytes]
    repro_seed: bytes
    repro_pairs: _containers.RepeatedScalarFieldContainer[bytes]
    repro_commitment: bytes
    def __init__(self, seed: _Optional[bytes] = ..., epoch: _Optional[bytes] = ..., commitments: _Optional[_Iterable[bytes]] = ..., repro_seed: _Optional[bytes] = ..., repro_pairs: _Optional[_Iterable[bytes]] = ..., repro_commitment: _Optional[bytes] = ...) -> None: ...

class CorrelationSpec(_message.Message):
    __slots__ = ("kind", "shapes", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    shapes: _containers.RepeatedCompositeFieldContainer[IntList]
    params: _containers.ScalarMap[str, int]
    def __init__(self, kind: _Optional[str] = ..., shapes: _Optional[_Iterable[_Union[IntList, _Mapping]]] = ..., params: _Optional[_Mapping[str, int]] = ...) -> None: ...

class CorrelationRequest(_message.Message):
    __slots__ = ("job_id", "pid", "specs", "epoch", "reproduction_key")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SPECS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REPRODUCTION_KEY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    pid: int
    specs: _containers.RepeatedCompositeFieldContainer[CorrelationSpec]
    epoch: bytes
    reproduction_key: bytes
    def __init__(self, job_id: _Optional[str] = ..., pid: _Optional[int] = ..., specs: _Optional[_Iterable[_Union[CorrelationSpec, _Mapping]]] = ..., epoch: _Optional[bytes] = ..., reproduction_key: _Optional[bytes] = ...) -> None: ...
