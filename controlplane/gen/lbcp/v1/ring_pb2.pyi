from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HashRing(_message.Message):
    __slots__ = ("cluster", "revision", "algorithm", "table_size", "minimum_ring_size", "maximum_ring_size", "hash_function", "backends", "priorities")
    class Algorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ALGORITHM_UNSPECIFIED: _ClassVar[HashRing.Algorithm]
        MAGLEV: _ClassVar[HashRing.Algorithm]
        RING_HASH: _ClassVar[HashRing.Algorithm]
    ALGORITHM_UNSPECIFIED: HashRing.Algorithm
    MAGLEV: HashRing.Algorithm
    RING_HASH: HashRing.Algorithm
    class Backend(_message.Message):
        __slots__ = ("name", "address", "port", "weight", "priority", "zone", "draining")
        NAME_FIELD_NUMBER: _ClassVar[int]
        ADDRESS_FIELD_NUMBER: _ClassVar[int]
        PORT_FIELD_NUMBER: _ClassVar[int]
        WEIGHT_FIELD_NUMBER: _ClassVar[int]
        PRIORITY_FIELD_NUMBER: _ClassVar[int]
        ZONE_FIELD_NUMBER: _ClassVar[int]
        DRAINING_FIELD_NUMBER: _ClassVar[int]
        name: str
        address: str
        port: int
        weight: int
        priority: int
        zone: str
        draining: bool
        def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., weight: _Optional[int] = ..., priority: _Optional[int] = ..., zone: _Optional[str] = ..., draining: _Optional[bool] = ...) -> None: ...
    class Priority(_message.Message):
        __slots__ = ("priority", "panic", "healthy_load", "degraded_load", "maglev_table", "ring_hashes", "ring_hosts")
        PRIORITY_FIELD_NUMBER: _ClassVar[int]
        PANIC_FIELD_NUMBER: _ClassVar[int]
        HEALTHY_LOAD_FIELD_NUMBER: _ClassVar[int]
        DEGRADED_LOAD_FIELD_NUMBER: _ClassVar[int]
        MAGLEV_TABLE_FIELD_NUMBER: _ClassVar[int]
        RING_HASHES_FIELD_NUMBER: _ClassVar[int]
        RING_HOSTS_FIELD_NUMBER: _ClassVar[int]
        priority: int
        panic: bool
        healthy_load: int
        degraded_load: int
        maglev_table: _containers.RepeatedScalarFieldContainer[int]
        ring_hashes: _containers.RepeatedScalarFieldContainer[int]
        ring_hosts: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, priority: _Optional[int] = ..., panic: _Optional[bool] = ..., healthy_load: _Optional[int] = ..., degraded_load: _Optional[int] = ..., maglev_table: _Optional[_Iterable[int]] = ..., ring_hashes: _Optional[_Iterable[int]] = ..., ring_hosts: _Optional[_Iterable[int]] = ...) -> None: ...
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    TABLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_RING_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_RING_SIZE_FIELD_NUMBER: _ClassVar[int]
    HASH_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    PRIORITIES_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    revision: int
    algorithm: HashRing.Algorithm
    table_size: int
    minimum_ring_size: int
    maximum_ring_size: int
    hash_function: str
    backends: _containers.RepeatedCompositeFieldContainer[HashRing.Backend]
    priorities: _containers.RepeatedCompositeFieldContainer[HashRing.Priority]
    def __init__(self, cluster: _Optional[str] = ..., revision: _Optional[int] = ..., algorithm: _Optional[_Union[HashRing.Algorithm, str]] = ..., table_size: _Optional[int] = ..., minimum_ring_size: _Optional[int] = ..., maximum_ring_size: _Optional[int] = ..., hash_function: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[HashRing.Backend, _Mapping]]] = ..., priorities: _Optional[_Iterable[_Union[HashRing.Priority, _Mapping]]] = ...) -> None: ...
