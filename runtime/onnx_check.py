"""Reading an ONNX file's outline before ONNX Runtime sees it: a bounds-checked protobuf walk.

Only the fields the runtime needs are decoded (IR version, opsets, metadata, graph inputs and
outputs, whether any initializer points to external data); everything else is skipped by length.
Malformed bytes of any kind end in a DDPMError, never in another exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.errors import DDPMError

if TYPE_CHECKING:
    from ..core.metadata import ModelInfo

# ONNX TensorProto.DataType values by name.
ELEM_TYPES = {1: "float32", 7: "int64", 10: "float16", 11: "float64", 16: "bfloat16", 6: "int32"}


@dataclass
class ValueInfo:
    name: str
    elem_type: int | None
    dims: list[int | str | None]  # int: fixed size; str: named dynamic; None: unknown


@dataclass
class ModelOutline:
    ir_version: int = 0
    opsets: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)
    initializer_names: set[str] = field(default_factory=set)
    initializer_dims: dict[str, list[int]] = field(default_factory=dict)
    label_tables: list[str] = field(default_factory=list)  # what a Gather looks the label y up in
    external_data: bool = False
    has_graph: bool = False


class _Malformed(Exception):
    pass


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed(pos)
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int | tuple[int, int]]]:
    """(field number, wire type, value) where value is an int or the (start, end) of a length-delimited field."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed(pos)
        if wire == 0:
            value, pos = _varint(data, pos, end)
            yield number, wire, value
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise _Malformed(pos)
            yield number, wire, int.from_bytes(data[pos : pos + size], "little")
            pos += size
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise _Malformed(pos)
            yield number, wire, (pos, pos + length)
            pos += length
        else:  # groups (3, 4) are not used by ONNX; 6, 7 do not exist
            raise _Malformed(pos)


def _text(data: memoryview, span: tuple[int, int]) -> str:
    try:
        return bytes(data[span[0] : span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed(span[0]) from None


def _span(value: int | tuple[int, int], pos: int = 0) -> tuple[int, int]:
    if not isinstance(value, tuple):
        raise _Malformed(pos)
    return value


def _value_info(data: memoryview, span: tuple[int, int]) -> ValueInfo:
    info = ValueInfo("", None, [])
    for number, _, value in _fields(data, *span):
        if number == 1:
            info.name = _text(data, _span(value))
        elif number == 2:  # TypeProto
            for t_number, _, t_value in _fields(data, *_span(value)):
                if t_number != 1:  # tensor_type
                    continue
                for k, _, v in _fields(data, *_span(t_value)):
                    if k == 1 and isinstance(v, int):
                        info.elem_type = v
                    elif k == 2:  # TensorShapeProto
                        for d_number, _, d_value in _fields(data, *_span(v)):
                            if d_number != 1:
                                continue
                            dim: int | str | None = None
                            for dk, _, dv in _fields(data, *_span(d_value)):
                                if dk == 1 and isinstance(dv, int):
                                    dim = dv
                                elif dk == 2:
                                    dim = _text(data, _span(dv))
                            info.dims.append(dim)
    return info


def _dims(data: memoryview, wire: int, value: int | tuple[int, int]) -> list[int]:
    """TensorProto.dims, one value or a packed run of varints."""
    if wire == 0 and isinstance(value, int):
        return [value]
    start, end = _span(value)
    found = []
    while start < end:
        dim, start = _varint(data, start, end)
        found.append(dim)
    return found


def _node(data: memoryview, span: tuple[int, int], outline: ModelOutline) -> None:
    """Only what the class-count check needs: the table input of a Gather that reads y."""
    inputs, op_type = [], ""
    for number, _, value in _fields(data, *span):
        if number == 1:
            inputs.append(_text(data, _span(value)))
        elif number == 4:
            op_type = _text(data, _span(value))
    if op_type == "Gather" and len(inputs) == 2 and inputs[1] == "y":
        outline.label_tables.append(inputs[0])


def _graph(data: memoryview, span: tuple[int, int], outline: ModelOutline) -> None:
    outline.has_graph = True
    for number, _, value in _fields(data, *span):
        if number == 1:
            _node(data, _span(value), outline)
        elif number == 5:  # initializer: TensorProto
            name, dims = "", []
            for t_number, t_wire, t_value in _fields(data, *_span(value)):
                if t_number == 8:
                    name = _text(data, _span(t_value))
                elif t_number == 1:
                    dims += _dims(data, t_wire, t_value)
                elif t_number == 13 or (t_number == 14 and t_value == 1):
                    outline.external_data = True
            outline.initializer_names.add(name)
            outline.initializer_dims[name] = dims
        elif number == 11:
            outline.inputs.append(_value_info(data, _span(value)))
        elif number == 12:
            outline.outputs.append(_value_info(data, _span(value)))


def read_outline(blob: bytes, origin: str = "model") -> ModelOutline:
    """The outline of a serialized ModelProto, or a DDPMError saying the bytes are not one."""
    data = memoryview(blob)
    outline = ModelOutline()
    try:
        for number, _, value in _fields(data, 0, len(data)):
            if number == 1 and isinstance(value, int):
                outline.ir_version = value
            elif number == 7:
                _graph(data, _span(value), outline)
            elif number == 8:
                domain, version = "", 0
                for k, _, v in _fields(data, *_span(value)):
                    if k == 1:
                        domain = _text(data, _span(v))
                    elif k == 2 and isinstance(v, int):
                        version = v
                outline.opsets[domain] = version
            elif number == 14:
                key = text = ""
                for k, _, v in _fields(data, *_span(value)):
                    if k == 1:
                        key = _text(data, _span(v))
                    elif k == 2:
                        text = _text(data, _span(v))
                outline.metadata[key] = text
    except _Malformed as exc:
        raise DDPMError(f"{origin} is not an ONNX model (malformed protobuf near byte {exc.args[0]})") from None
    if not outline.has_graph or outline.ir_version < 3 or "" not in outline.opsets:
        raise DDPMError(f"{origin} is not an ONNX model (no graph, IR version or default opset)")
    return outline


def check_contract(outline: ModelOutline, info: ModelInfo, origin: str) -> None:
    """The graph's inputs and outputs are the ones its metadata promises (names, element types, ranks)."""
    if outline.external_data:
        raise DDPMError(f"{origin} keeps weights in external data files; only single-file models are loaded")
    expected_inputs, expected_outputs = info.io_contract()
    for table in outline.label_tables:  # the class embedding: one row per class and one for "no class"
        rows = outline.initializer_dims.get(table, [None])[0]
        if info.num_classes and rows is not None and rows != info.num_classes + 1:
            raise DDPMError(
                f"{origin}: its metadata says {info.num_classes} classes, but the graph's class embedding "
                f'{table} has {rows} rows ({rows - 1} classes and "no class")'
            )
    inputs = {v.name: v for v in outline.inputs if v.name not in outline.initializer_names}
    outputs = {v.name: v for v in outline.outputs}
    for kind, found, expected in (("inputs", inputs, expected_inputs), ("outputs", outputs, expected_outputs)):
        if set(found) != set(expected):
            raise DDPMError(f"{origin}: {kind} are {sorted(found)}, expected {sorted(expected)}")
        for name, (elem_type, rank) in expected.items():
            value = found[name]
            if ELEM_TYPES.get(value.elem_type) != elem_type or len(value.dims) != rank:
                raise DDPMError(
                    f"{origin}: {name} is {ELEM_TYPES.get(value.elem_type, value.elem_type)} "
                    f"of rank {len(value.dims)}, expected {elem_type} of rank {rank}"
                )
