"""Schema-aware tokenizer: a JSON Schema decides the structure; only the schema's open choices and
string content cost tokens. See docs/schema-tokenizer.md."""

from .codec import SchemaDecodeError, SchemaEncodeError, StreamDecoder
from .tokenizer import SchemaNotFound, SchemaTokenizer, load_schema
from .vocab import Vocab
from .yaml_loader import DocumentParseError

__all__ = [
    "SchemaTokenizer", "SchemaEncodeError", "SchemaDecodeError", "SchemaNotFound",
    "StreamDecoder", "Vocab", "load_schema", "DocumentParseError",
]
