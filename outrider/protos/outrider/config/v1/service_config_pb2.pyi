from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ExtAuthzConfig(_message.Message):
    __slots__ = ("schema", "version", "payload_json")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    schema: int
    version: str
    payload_json: str
    def __init__(self, schema: _Optional[int] = ..., version: _Optional[str] = ..., payload_json: _Optional[str] = ...) -> None: ...

class RateLimitServiceConfig(_message.Message):
    __slots__ = ("schema", "version", "payload_json")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    schema: int
    version: str
    payload_json: str
    def __init__(self, schema: _Optional[int] = ..., version: _Optional[str] = ..., payload_json: _Optional[str] = ...) -> None: ...

class ExtProcConfig(_message.Message):
    __slots__ = ("schema", "version", "payload_json")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    schema: int
    version: str
    payload_json: str
    def __init__(self, schema: _Optional[int] = ..., version: _Optional[str] = ..., payload_json: _Optional[str] = ...) -> None: ...
